"""Fault scenarios against a real hub, shared by tests/test_faults.py and bench/faults.py.

``run_faults`` runs background ``Traffic`` on a real hub (``tests/hub.py``) —
a few users starting servers through the hub's REST API, reporting events
with their server's own token straight to the credits service (as the
single-user server extension does), stopping them, starting again — and
injects each ``Fault`` in turn while it runs (``scenario``: one fault, its own
traffic). After each fault, once events are answered again and servers start
again, ``check_now`` looks at the credits database with the traffic still
running; at the end the traffic stops, every server is stopped, and the final
check also wants every session ended and nothing reserved or assigned:

- ``verify`` holds (the ledger's own invariants);
- every ended session's holds were each resolved by exactly one settlement
  transfer (nothing left reserved for it);
- every event answered ``earned``/``capped``/``rejected`` is stored exactly
  once with that outcome, and every earned one has exactly one transfer;
- no GPU device had two live assignments at any moment, and no single-user
  process runs unknown to the hub (a GPU in use that the allocator thinks free);
- every call that failed said why: a JSON answer with a message, or a refused
  connection; none ran into the client's timeout (a hang).

Event batches that failed are sent again, with the same keys, while a server
runs (as the single-user reporter does): what a failed request did commit is
answered "duplicate", never earned twice.

Results are JSON-able dicts with their figures, ``problems`` and ``"ok"``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import requests
from sqlalchemy import func, select

from jupyterhub_credits.earning.schema import events
from jupyterhub_credits.earning.store import EarningService, ledger_key
from jupyterhub_credits.ledger.schema import holds, transfers
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.schema import gpu_assignments, session_holds, sessions
from tests.hub import HubProcess
from tests.waiting import wait_for

#: The catalog changes of a fault hub: runs of any length earn, without a daily cap, so
#: that an event earned twice would show in the balances.
FAULT_CATALOG = {"earning": {
    "max_claims_per_day": 1_000_000,
    "rate_limit_per_minute": 100_000,
    "session_grace_s": 0,
    "rules": {"training_run": {"min_duration_s": 1, "min_interval_s": 0, "max_per_day": 1_000_000,
                               "points": "0.5"}},
}}

#: Hub settings of a fault hub: the hub polls servers every 2 s (30 s by default) and the
#: meter reconciles every 5 s with 2 s of grace (60 s and 15 s), so a crash is noticed
#: within seconds; the service pays pending earnings every 5 s.
FAULT_HUB_CONFIG = """
c.Spawner.poll_interval = 2
for _service in c.JupyterHub.services:
    if _service["name"] == "credits":
        _service["command"] = [*_service["command"], "--Meter.reconcile_interval=5",
                               "--Meter.reconcile_grace=2",
                               "--CreditsService.earnings_pay_interval=5"]
"""

#: Seconds a client call may take before it counts as a hang.
CLIENT_TIMEOUT = 20
GRANT = 1_000  # credits per traffic user: never the reason a spawn is refused


def utc_stamp() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


# --- recording what every call answered ---------------------------------------------------


@dataclass
class Call:
    what: str  # spawn, stop, events, ...
    phase: str  # before, fault, after
    seconds: float
    status: int | None  # None: no HTTP answer
    failure: str | None = None  # None: it worked; else "refused", "timeout", "http", ...
    message: str = ""

    @property
    def clear(self) -> bool:
        """A failure that says what happened: a message, or a refused connection."""
        return self.failure in (None, "refused", "reset", "http")


def _message_of(response: requests.Response) -> str | None:
    """The message of an error answer, when it is JSON with one (None otherwise)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return body["message"]
    return None


def _title(page: str) -> str | None:
    """What an HTML error page says: its heading, else its title."""
    for tag in ("h1", "title"):
        start = page.find(f"<{tag}")
        if start != -1:
            start = page.find(">", start) + 1
            end = page.find(f"</{tag}>", start)
            text = " ".join(page[start:end].split())
            if text:
                return f"HTML page: {text[:120]}"
    return None


class CallLog:
    def __init__(self):
        self.calls: list[Call] = []
        self.phase = "before"
        self._lock = threading.Lock()

    def request(self, what: str, method: str, url: str, *, ok=(200, 201, 202, 204),
                timeout: float = CLIENT_TIMEOUT, **kwargs) -> requests.Response | None:
        """One HTTP call, recorded; the response (None when there was none)."""
        phase = self.phase
        started = time.monotonic()
        try:
            response = requests.request(method, url, timeout=(5, timeout), **kwargs)
        except requests.Timeout as error:
            self._add(Call(what, phase, time.monotonic() - started, None, "timeout",
                           str(error)[:200]))
            return None
        except requests.ConnectionError as error:
            text = str(error)
            failure = "refused" if "refused" in text.lower() else "reset"
            self._add(Call(what, phase, time.monotonic() - started, None, failure, text[:200]))
            return None
        seconds = time.monotonic() - started
        if response.status_code in ok:
            self._add(Call(what, phase, seconds, response.status_code))
        else:
            message = _message_of(response)
            failure = "http" if message else "unclear"
            if message is None and response.headers.get("Content-Type", "").startswith(
                    "text/html"):
                failure = "html"  # a page (the hub's error page, served through the proxy)
            self._add(Call(what, phase, seconds, response.status_code, failure,
                           message or _title(response.text) or response.text[:200]))
        return response

    def _add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def summary(self, phases: set[str] | None = None, html_expected: bool = False) -> dict:
        """Figures of the calls (of ``phases``, else all). ``html_expected``: an HTML page
        instead of the hub's JSON counts as clear (the proxy's fault: see proxy_restarted)."""
        with self._lock:
            calls = [c for c in self.calls if phases is None or c.phase in phases]
        by: dict = defaultdict(Counter)
        for call in calls:
            by[f"{call.what}/{call.phase}"][call.failure or f"ok {call.status}"] += 1
        unclear = [c for c in calls if not c.clear
                   and not (html_expected and c.failure == "html")]
        messages = Counter(f"{c.what} {c.status or c.failure}: {c.message[:140]}"
                           for c in calls if c.failure)
        return {
            "calls": len(calls),
            "by_kind_and_phase": {key: dict(value) for key, value in sorted(by.items())},
            "hangs": sum(c.failure == "timeout" for c in calls),
            "unclear": len(unclear),
            "html_pages": sum(c.failure == "html" for c in calls),
            "failure_messages": dict(messages.most_common(12)),
            "slowest_s": round(max((c.seconds for c in calls), default=0), 2),
        }


# --- background traffic ----------------------------------------------------------------------


@dataclass
class TrafficUser:
    name: str
    options: dict
    stay: tuple[float, float] = (2.0, 5.0)  # seconds a server runs, reporting events
    spawns_ready: int = 0
    retry: list[list[dict]] = field(default_factory=list)  # batches that got no answer


class Traffic:
    """Users cycling servers and reporting events until ``stop``; see the module docstring."""

    def __init__(self, hub: HubProcess, users: list[TrafficUser], *, seed: int = 1,
                 event_interval: float = 0.3):
        self.hub = hub
        self.users = users
        self.log = CallLog()
        self.event_interval = event_interval
        self.random = random.Random(seed)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        #: (user, key) → the outcome the service answered (never "duplicate" here).
        self.answers: dict[tuple[str, str], str] = {}
        self.duplicates: Counter = Counter()  # answers "duplicate" to a first send
        self.ready_in: Counter = Counter()  # servers that became ready, by phase
        #: Users a fault started servers for, outside the traffic (checked with it).
        self.extra_users: list[str] = []
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self.run_id = f"{os.getpid()}-{int(time.time() * 1000)}"

    # what scenarios use

    def start(self) -> "Traffic":
        for user in self.users:
            self.hub.grant(user.name, GRANT, key=f"faults-grant:{user.name}")
            thread = threading.Thread(target=self._run, args=(user,), daemon=True,
                                      name=f"traffic-{user.name}")
            thread.start()
            self.threads.append(thread)
        return self

    def set_phase(self, phase: str) -> None:
        self.log.phase = phase

    def answered(self, phase: str | None = None) -> int:
        with self.log._lock:
            return sum(1 for c in self.log.calls if c.what == "events" and c.failure is None
                       and (phase is None or c.phase == phase))

    def wait_warm(self, timeout: float = 120) -> None:
        """Until at least one server is up and events have been answered."""
        wait_for(lambda: self.answered() >= 1, timeout=timeout,
                 what="the traffic to be under way (a server up, events answered)")

    def wait_recovered(self, timeout: float = 120, answered: int = 3, ready: int = 1) -> float:
        """Until, in the current phase (after a fault), events are answered again and a
        server has started again; the seconds it took."""
        phase = self.log.phase
        started = time.monotonic()
        wait_for(lambda: self.answered(phase) >= answered and self.ready_in[phase] >= ready,
                 timeout=timeout, what="events answered and a server started after the fault")
        return time.monotonic() - started

    def stop(self, timeout: float = 120) -> None:
        """Stop the traffic: every user finishes its step and stops its server."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout)
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            raise TimeoutError(f"traffic threads did not finish: {stuck}")

    # one user

    def _run(self, user: TrafficUser) -> None:
        while not self.stopping.is_set():
            server = self._start_server(user)
            if server is None:
                self.stopping.wait(0.5)  # back off a little before asking again
                continue
            stay_until = time.monotonic() + self.random.uniform(*user.stay)
            token, api_url = server
            while time.monotonic() < stay_until and not self.stopping.is_set():
                self._report(user, token, api_url)
                self.stopping.wait(self.event_interval)
            # What failed earlier is sent again while a server runs (its claims count then).
            for batch in user.retry[:]:
                if self._send(user, token, api_url, batch, retry=True):
                    user.retry.remove(batch)
            self._stop_server(user)
        self._stop_server(user)

    def _hub_url(self, path: str) -> str:
        return f"{self.hub.url}/hub/api{path}"

    def _headers(self, token: str | None = None) -> dict:
        return {"Authorization": f"token {token or self.hub.token}"}

    def _start_server(self, user: TrafficUser) -> tuple[str, str] | None:
        """Start the user's server and wait until it is ready; (its token, credits API URL)."""
        self.log.request("create user", "POST", self._hub_url(f"/users/{user.name}"),
                         headers=self._headers(), ok=(201, 409))
        response = self.log.request("spawn", "POST", self._hub_url(f"/users/{user.name}/server"),
                                    headers=self._headers(), json={"user_options": user.options},
                                    ok=(201, 202, 400))
        if response is None or response.status_code not in (201, 202):
            # 400 "already running/pending": a server left from before a hub restart.
            if response is not None and response.status_code == 400:
                self._stop_server(user)
            return None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not self.stopping.is_set():
            model = self.log.request("poll", "GET", self._hub_url(f"/users/{user.name}"),
                                     headers=self._headers())
            if model is not None and model.status_code == 200:
                server = (model.json().get("servers") or {}).get("")
                if server is None:
                    return None  # the start failed (the hub says why in its log)
                if server.get("ready"):
                    environment = self._server_environment(user.name)
                    if environment is None:
                        return None
                    user.spawns_ready += 1
                    with self._lock:
                        self.ready_in[self.log.phase] += 1
                    return (environment["JUPYTERHUB_API_TOKEN"],
                            environment["JUPYTERHUB_CREDITS_API_URL"])
            self.stopping.wait(0.5)
        self._stop_server(user)
        return None

    def _server_environment(self, user: str) -> dict | None:
        pid = self.hub.server_pids().get(user)
        if pid is None:
            return None
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return None  # it died meanwhile
        pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        return {key.decode(): value.decode() for key, value in pairs}

    def _report(self, user: TrafficUser, token: str, api_url: str) -> None:
        batch = [{"kind": "training_run", "key": f"faults-{self.run_id}-{next(self._counter)}",
                  "time": utc_stamp(), "payload": {"duration_s": 1}} for _ in range(2)]
        if not self._send(user, token, api_url, batch, retry=False):
            user.retry.append(batch)

    def _send(self, user: TrafficUser, token: str, api_url: str, batch: list[dict], *,
              retry: bool) -> bool:
        response = self.log.request("events" if not retry else "events retried", "POST",
                                    f"{api_url}/events", headers=self._headers(token),
                                    json=batch)
        if response is None or response.status_code != 200:
            return False
        with self._lock:
            for answer in response.json():
                key = (user.name, answer["key"])
                if answer["outcome"] == "duplicate":
                    if key not in self.answers:
                        # A retry whose first send did commit: stored once, told "duplicate".
                        self.duplicates[answer["key"]] += 1
                        self.answers.setdefault(key, "committed-unseen")
                else:
                    self.answers[key] = answer["outcome"]
        return True

    def _stop_server(self, user: TrafficUser) -> None:
        response = self.log.request("stop", "DELETE", self._hub_url(f"/users/{user.name}/server"),
                                    headers=self._headers(), ok=(202, 204, 400, 404))
        if response is None:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            model = self.log.request("poll", "GET", self._hub_url(f"/users/{user.name}"),
                                     headers=self._headers())
            if model is not None and model.status_code == 200 and \
                    "" not in (model.json().get("servers") or {}):
                return
            time.sleep(0.3)  # polling interval, not synchronisation


# --- the checks ---------------------------------------------------------------------------------


def settle_everything(hub: HubProcess, users: list[str], timeout: float = 90) -> None:
    """Stop whatever still runs and wait until every session of ``users`` has ended."""
    for user in users:
        try:
            if hub.server(user) is not None:
                hub.api("DELETE", f"/users/{user}/server")
        except requests.RequestException:
            pass

    def all_ended():
        try:
            if any(hub.server(user) is not None for user in users):
                return False
        except requests.RequestException:
            return False
        with hub.ledger.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(sessions).where(
                sessions.c.user.in_(users), sessions.c.state != "ended")).scalar() == 0

    wait_for(all_ended, timeout=timeout, interval=0.5,
             what="every server stopped and every session settled")


def session_problems(hub: HubProcess, users: list[str], *,
                     final: bool = True) -> tuple[dict, list[str]]:
    """Sessions of ``users``: counts, and what is wrong with any: an ended session whose
    holds were not each resolved exactly once; with ``final``, any session not ended."""
    problems = []
    with hub.ledger.engine.connect() as conn:
        rows = conn.execute(select(sessions).where(sessions.c.user.in_(users))).all()
        hold_rows = conn.execute(
            select(sessions.c.key, session_holds.c.seq, session_holds.c.hold_key, holds.c.state,
                   transfers.c.id)
            .join(session_holds, session_holds.c.session_id == sessions.c.id)
            .join(transfers, transfers.c.key == session_holds.c.hold_key, isouter=True)
            .join(holds, holds.c.transfer_id == transfers.c.id, isouter=True)
            .where(sessions.c.user.in_(users), sessions.c.state == "ended")).all()
        # A hold's settlement is one keyed post or void (a partial post adds an unkeyed void
        # of the remainder in the same transaction).
        resolutions = Counter(conn.execute(
            select(transfers.c.pending_id).where(transfers.c.pending_id.is_not(None),
                                                 transfers.c.key.is_not(None))).scalars())
    reasons = Counter(row.end_reason for row in rows)
    for row in rows if final else ():
        if row.state != "ended":
            problems.append(f"session {row.key} of {row.user} is still {row.state}")
    for key, seq, hold_key, state, hold_id in hold_rows:
        if hold_id is None:
            continue  # recorded, never placed (a crash in between): nothing reserved
        if state == "pending":
            problems.append(f"hold {hold_key} of ended session {key} is still pending")
        if resolutions[hold_id] != 1:
            problems.append(f"hold {hold_key} was resolved {resolutions[hold_id]} times")
    return {"sessions": len(rows), "end_reasons": {str(k): v for k, v in reasons.items()}}, \
        problems


def event_problems(hub: HubProcess, traffic: Traffic) -> tuple[dict, list[str]]:
    """Every answered event stored once with its outcome; every earned one paid exactly once."""
    # The service pays what a crash left unpaid every few seconds; do it now, the same way.
    EarningService(hub.ledger).pay_pending()
    users = [u.name for u in traffic.users]
    problems = []
    with hub.ledger.engine.connect() as conn:
        stored = {(row.user, row.key): row for row in conn.execute(
            select(events.c.user, events.c.key, events.c.outcome, events.c.points,
                   events.c.transfer_id).where(events.c.user.in_(users),
                                               events.c.key.like("faults-%")))}
        earn_keys = {ledger_key(user, key) for (user, key), row in stored.items()
                     if row.outcome == "earned"}
        paid = Counter()
        amounts = {}
        for chunk in _chunks(sorted(earn_keys), 400):
            for key, amount in conn.execute(select(transfers.c.key, transfers.c.amount)
                                            .where(transfers.c.key.in_(chunk))):
                paid[key] += 1
                amounts[key] = amount
    outcomes = Counter(traffic.answers.values())
    for (user, key), outcome in traffic.answers.items():
        row = stored.get((user, key))
        if row is None:
            problems.append(f"{user}'s event {key} was answered {outcome} but is not stored")
        elif outcome != "committed-unseen" and row.outcome != outcome:
            problems.append(f"{user}'s event {key} answered {outcome}, stored {row.outcome}")
    for (user, key), row in stored.items():
        if row.outcome != "earned":
            continue
        transfer_key = ledger_key(user, key)
        if paid[transfer_key] != 1:
            problems.append(f"{user}'s earned event {key} has {paid[transfer_key]} transfers")
        elif amounts[transfer_key] != row.points:
            problems.append(f"{user}'s event {key}: earned {row.points}, "
                            f"transferred {amounts[transfer_key]}")
    figures = {"answered": dict(outcomes), "stored": len(stored),
               "earned_stored": sum(r.outcome == "earned" for r in stored.values()),
               "committed_before_a_failed_answer": sum(traffic.duplicates.values())}
    return figures, problems


def gpu_problems(hub: HubProcess, *, final: bool = True) -> tuple[dict, list[str]]:
    """No device with two overlapping assignments ever; with ``final``, none live."""
    problems = []
    with hub.ledger.engine.connect() as conn:
        rows = conn.execute(select(gpu_assignments.c.host, gpu_assignments.c.device,
                                   gpu_assignments.c.session_id, gpu_assignments.c.assigned_at,
                                   gpu_assignments.c.released_at)
                            .order_by(gpu_assignments.c.assigned_at)).all()
    by_device = defaultdict(list)
    for row in rows:
        by_device[(row.host, row.device)].append(row)
    for device, assignments in by_device.items():
        for earlier, later in zip(assignments, assignments[1:]):
            if earlier.released_at is None or earlier.released_at > later.assigned_at:
                problems.append(f"GPU {device[1]}: session {earlier.session_id} still held it "
                                f"when session {later.session_id} got it")
    live = [row for row in rows if row.released_at is None and final]
    for row in live:
        problems.append(f"GPU {row.device} still assigned to session {row.session_id}")
    return {"assignments": len(rows), "devices": len(by_device)}, problems


def server_processes(hub: HubProcess) -> dict[int, str]:
    """Single-user processes this hub started (pid → user), whether or not it knows them."""
    marker = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.hub_port}/hub/api".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            # The server itself, not what it started (kernels inherit its environment).
            if b"singleuser" not in (entry / "cmdline").read_bytes():
                continue
        except OSError:
            continue
        users = [item[len(b"JUPYTERHUB_USER="):] for item in environ
                 if item.startswith(b"JUPYTERHUB_USER=")]
        if marker in environ and users:
            found[int(entry.name)] = users[0].decode()
    return found


def orphan_servers(hub: HubProcess) -> list[int]:
    """Single-user processes of this hub that the hub does not know of (it may have lost
    them in a crash): each may be using a GPU the allocator thinks free."""
    known = set(hub.server_pids().values())
    return sorted(pid for pid in server_processes(hub) if pid not in known)


def log_errors(hub: HubProcess, since: int) -> list[str]:
    """Tracebacks and error lines of credits code in the hub's log (hub and service) after
    byte ``since``."""
    try:
        with open(hub.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        # Credits code's own errors (not the proxy's lines about the health checks).
        if "Traceback" in line or line.startswith("[E ") and (
                "CreditsService" in line or "credits:" in line or "credits meter" in line):
            found.append(line[:200])
    return found


def log_size(hub: HubProcess) -> int:
    try:
        return hub.log_path.stat().st_size
    except OSError:
        return 0


def check_now(hub: HubProcess, traffic: Traffic, *, phases: set[str] | None = None,
              html_expected: bool = False, final: bool = False) -> dict:
    """The invariants, with the traffic still running (``final`` False: open sessions and
    live GPUs are allowed) or after it stopped and everything settled (``final``)."""
    users = [u.name for u in traffic.users] + traffic.extra_users
    # This process's own connections, too, may have been cut by a fault (PostgreSQL
    # restarted): the checks start from fresh ones.
    hub.ledger.engine.dispose()
    report = verify(hub.ledger.engine)
    session_figures, session_issues = session_problems(hub, users, final=final)
    event_figures, event_issues = event_problems(hub, traffic)
    gpu_figures, gpu_issues = gpu_problems(hub, final=final)
    calls = traffic.log.summary(phases, html_expected=html_expected)
    problems = [*session_issues, *event_issues, *gpu_issues]
    if not report.ok:
        problems.append(f"verify failed: {json.dumps(report.to_dict())[:500]}")
    if calls["hangs"]:
        problems.append(f"{calls['hangs']} client call(s) ran into the {CLIENT_TIMEOUT} s timeout")
    if calls["unclear"]:
        problems.append(f"{calls['unclear']} failure(s) without a clear message")
    result = {"verify": report.ok, "sessions": session_figures, "events": event_figures,
              "gpus": gpu_figures, "calls": calls}
    if final:
        reserved = {user: hub.ledger.balance(user).reserved for user in users}
        problems += [f"{user} still has {units} units reserved"
                     for user, units in reserved.items() if units]
        orphans = orphan_servers(hub)
        problems += [f"single-user process {pid} runs unknown to the hub" for pid in orphans]
        result["spawns_ready"] = {u.name: u.spawns_ready for u in traffic.users}
    result.update(problems=problems[:20], problem_count=len(problems), ok=not problems)
    return result


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- the scenarios -----------------------------------------------------------------------------


def default_users(prefix: str, stay: tuple[float, float] = (2.0, 5.0)) -> list[TrafficUser]:
    """Three users competing for the hub's two A100s (one of them is refused for capacity
    whenever the other two run), and one on CPU."""
    gpu = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "1"}
    cpu = {"image": "tf-2.21-cpu", "gpu_type": "none", "hours": "1"}
    return [TrafficUser(f"{prefix}-a", gpu, stay), TrafficUser(f"{prefix}-b", gpu, stay),
            TrafficUser(f"{prefix}-c", gpu, stay), TrafficUser(f"{prefix}-cpu", cpu, stay)]


@dataclass
class Fault:
    """One fault: ``inject(hub, traffic)`` does it (and waits for what should come back by
    itself), returning its figures."""

    name: str
    inject: Callable[[HubProcess, Traffic], dict]
    #: The hub's REST API answers HTML pages (not JSON) while this fault lasts: a proxy
    #: started again serves the hub's error pages (404 until the hub has put its routes
    #: back, 503 while the hub behind it is not up yet): JupyterHub's own behaviour.
    html_expected: bool = False


def run_faults(hub: HubProcess, fault_list: list[Fault], *, prefix: str,
               stay: tuple[float, float] = (2.0, 5.0), recover_timeout: float = 120,
               recover_ready: int = 1) -> dict:
    """One run of traffic through every fault in turn; after each, ``check_now`` with the
    traffic still running; at the end, traffic stopped and everything settled, the final
    check. Returns {fault name: result, ..., "final": result}.

    A fault is over once events are answered again and ``recover_ready`` servers started
    after it became ready (0: the suite's shortcut; the final figures still count the
    servers started after each fault, ``ready_after_faults``)."""
    started = time.monotonic()
    traffic = Traffic(hub, default_users(prefix, stay))
    results: dict = {}
    error = None
    warm_s = None
    try:
        traffic.start()
        traffic.wait_warm()
        warm_s = time.monotonic() - started
        for fault in fault_list:
            since = log_size(hub)
            fault_started = time.monotonic()
            traffic.set_phase(f"{fault.name}:fault")
            result: dict = {}
            results[fault.name] = result
            try:
                result["fault"] = fault.inject(hub, traffic)
                traffic.set_phase(f"{fault.name}:after")
                result["recovered_s"] = round(traffic.wait_recovered(
                    recover_timeout, ready=recover_ready), 2)
            except TimeoutError as timeout:
                result["error"] = str(timeout)
            result.update(check_now(hub, traffic, phases={f"{fault.name}:fault",
                                                          f"{fault.name}:after"},
                                    html_expected=fault.html_expected))
            result["log_errors"] = log_errors(hub, since)[:10]
            if "error" in result:
                result["ok"] = False
                result["problems"].insert(0, result["error"])
            result["seconds"] = round(time.monotonic() - fault_started, 1)
            traffic.set_phase("between")
    except TimeoutError as timeout:
        error = str(timeout)
    finally:
        stopping = time.monotonic()
        try:
            traffic.stop()
            settle_everything(hub, [u.name for u in traffic.users] + traffic.extra_users)
        except TimeoutError as timeout:
            error = error or str(timeout)
        stop_s = time.monotonic() - stopping
    final = check_now(hub, traffic, final=True,
                      html_expected=any(f.html_expected for f in fault_list))
    if error:
        final["ok"] = False
        final["problems"].insert(0, error)
    final["seconds"] = round(time.monotonic() - started, 1)
    final["warm_up_s"] = round(warm_s, 1) if warm_s is not None else None
    final["stop_and_settle_s"] = round(stop_s, 1)
    final["ready_after_faults"] = {phase: count for phase, count in traffic.ready_in.items()
                                   if phase != "before"}
    results["final"] = final
    return results


def scenario(hub: HubProcess, fault: Fault, **options) -> dict:
    """One fault in a traffic run of its own: its result, with the final check folded in."""
    results = run_faults(hub, [fault], prefix=fault.name.replace("_", ""), **options)
    result, final = results[fault.name], results["final"]
    result["final"] = {key: final[key] for key in ("sessions", "spawns_ready", "problems", "ok",
                                                   "seconds")}
    result["ok"] = result["ok"] and final["ok"]
    return result


def _wait_service_back(hub: HubProcess, old: set[int], timeout: float = 60) -> float:
    started = time.monotonic()

    def back():
        pids = set(hub.service_pids())
        if not pids or pids & old:
            return False
        try:
            return requests.get(f"http://127.0.0.1:{hub.service_port}/services/credits/health",
                                timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(back, timeout=timeout, interval=0.2, what="the hub to restart the credits service")
    return time.monotonic() - started


def kill_service(hub: HubProcess, traffic: Traffic) -> dict:
    """The credits service gets SIGKILL; the hub notices (its poll of managed services, every
    30 s) and starts it again."""
    old = set(hub.service_pids())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    return {"killed": len(old), "service_back_s": round(_wait_service_back(hub, old, 90), 2)}


def _ready(hub: HubProcess, user: str) -> bool:
    try:
        server = hub.server(user)
    except requests.RequestException:
        return False
    return bool(server and server.get("ready"))


def kill_server(hub: HubProcess, traffic: Traffic) -> dict:
    """One traffic user's single-user server gets SIGKILL while it reports events."""
    names = [u.name for u in traffic.users]

    def victim():
        for user, pid in hub.server_pids().items():
            session = hub.sessions.open_session(user) if user in names else None
            if session is not None and session.state == "running" and _ready(hub, user):
                return user, pid, session
        return None

    user, pid, session = wait_for(victim, timeout=60, what="a running traffic server")
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    ended = wait_for(lambda: (s := hub.sessions.get(session.key)).state == "ended" and s,
                     timeout=60, what="the killed server's session to be settled")
    return {"victim": user, "settled_s": round(time.monotonic() - started, 2),
            "end_reason": ended.end_reason, "charged": ended.charged}


def restart_proxy(hub: HubProcess, traffic: Traffic) -> dict:
    """configurable-http-proxy gets SIGKILL; the hub's check (every 5 s) starts it again and
    puts its routes back."""
    pid = int((hub.workdir / "proxy.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()

    def back():
        try:
            new = int((hub.workdir / "proxy.pid").read_text())
            hub_answer = requests.get(f"{hub.url}/hub/api/", timeout=2)
            service_answer = requests.get(f"{hub.url}/services/credits/health", timeout=2)
        except (OSError, ValueError, requests.RequestException):
            return False
        return new != pid and hub_answer.status_code == service_answer.status_code == 200

    wait_for(back, timeout=60, interval=0.2, what="the hub to restart the proxy")
    return {"proxy_back_s": round(time.monotonic() - started, 2)}


def user_processes(hub: HubProcess, user: str) -> list[int]:
    """Single-user processes of ``user`` started by this hub (whether the hub knows them)."""
    return [pid for pid, owner in server_processes(hub).items() if owner == user]


def kill_hub(hub: HubProcess, traffic: Traffic) -> dict:
    """The hub, its proxy and its service get SIGKILL while a server is starting (its process
    exists, it does not answer yet), and the hub is started again. The traffic's servers
    keep running meanwhile; the one that was starting must not run on unknown to the hub
    (with GPUs the allocator would give to someone else)."""
    probe = f"{traffic.users[0].name}-probe"
    hub.grant(probe, 10, key=f"faults-grant:{probe}")
    traffic.extra_users.append(probe)
    headers = {"Authorization": f"token {hub.token}"}
    traffic.log.request("create user", "POST", f"{hub.url}/hub/api/users/{probe}",
                        headers=headers, ok=(201, 409))
    spawning = threading.Thread(target=traffic.log.request, daemon=True, args=(
        "spawn killed", "POST", f"{hub.url}/hub/api/users/{probe}/server"), kwargs={
        "headers": headers, "ok": (201, 202),
        "json": {"user_options": {"image": "tf-2.21-cpu", "gpu_type": "none", "hours": "1"}}})
    spawning.start()
    pids = wait_for(lambda: user_processes(hub, probe), timeout=60, interval=0.05,
                    what="the starting server's process")
    session = hub.sessions.open_session(probe)
    mid_start = session is not None and session.state == "starting"
    hub.kill()
    spawning.join(CLIENT_TIMEOUT + 5)
    started = time.monotonic()
    hub.start(timeout=90)
    back = time.monotonic() - started
    # The restarted hub finds the process of the interrupted start and stops it.
    wait_for(lambda: not set(pids) & set(user_processes(hub, probe)) or _ready(hub, probe),
             timeout=60, what="the interrupted start's process to be stopped")
    ended = None
    if mid_start:
        ended = wait_for(lambda: (s := hub.sessions.get(session.key)).state == "ended" and s,
                         timeout=60, what="the interrupted start's session to be settled")
    return {"hub_back_s": round(back, 2), "killed_mid_start": mid_start,
            "interrupted_start": None if ended is None else {
                "end_reason": ended.end_reason, "charged": ended.charged,
                "process_left": bool(set(pids) & set(user_processes(hub, probe)))}}


def restart_postgres(cluster) -> Callable[[HubProcess, Traffic], dict]:
    """The credits database's PostgreSQL server restarts (``pg_ctl restart -m fast``): every
    connection of the hub and the service is cut at once."""
    def inject(hub: HubProcess, traffic: Traffic) -> dict:
        restart_s = cluster.restart()
        hub.ledger.engine.dispose()  # this process's own connections were cut too
        return {"restart_s": round(restart_s, 2)}

    return inject


def fill_disk(mount: Path, hold_s: float = 4.0) -> Callable[[HubProcess, Traffic], dict]:
    """The filesystem holding the SQLite credits database is full for ``hold_s`` seconds."""
    def inject(hub: HubProcess, traffic: Traffic) -> dict:
        # A start while the disk is full, whatever the GPUs' contention: the spawner's own
        # answer (a CPU server of a user with credits: nothing else can refuse it).
        probe = f"{traffic.users[0].name}-probe"
        hub.grant(probe, 10, key=f"faults-grant:{probe}")
        filler = mount / "filler"
        written = fill(filler)
        phase = traffic.log.phase
        full_until = time.monotonic() + hold_s
        traffic.log.request("create user", "POST", f"{hub.url}/hub/api/users/{probe}",
                            headers={"Authorization": f"token {hub.token}"}, ok=(201, 409))
        answer = traffic.log.request(
            "spawn while full", "POST", f"{hub.url}/hub/api/users/{probe}/server",
            headers={"Authorization": f"token {hub.token}"}, ok=(),
            json={"user_options": {"image": "tf-2.21-cpu", "gpu_type": "none", "hours": "1"}})
        time.sleep(max(0.0, full_until - time.monotonic()))  # the fault's length
        with traffic.log._lock:
            failed = Counter(c.what for c in traffic.log.calls if c.phase == phase and c.failure)
        filler.unlink()
        traffic.extra_users.append(probe)
        return {"filled_bytes": written, "held_s": hold_s, "failed_while_full": dict(failed),
                "spawn_while_full": {"status": answer.status_code if answer is not None else None,
                                     "message": _message_of(answer) if answer is not None
                                     else None}}

    return inject


def all_faults(cluster) -> list[Fault]:
    """The faults of the hub on the throwaway PostgreSQL cluster, in the bench's order."""
    return [Fault("server_killed", kill_server), Fault("service_killed", kill_service),
            Fault("proxy_restarted", restart_proxy, html_expected=True),
            Fault("postgres_restarted", restart_postgres(cluster)),
            Fault("hub_killed", kill_hub, html_expected=True)]


def fill(path: Path) -> int:
    """Write to ``path`` until the filesystem is full; bytes written."""
    written = 0
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(block)
            except OSError:
                break
    # Whatever small blocks are left, too: the database must find no page free.
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                written += f.write(b"\0" * 512)
            except OSError:
                return written


def mount_tmpfs(path: Path, size: str = "16m") -> bool:
    """Mount a size-limited tmpfs at ``path``; False when this process may not."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    return result.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
