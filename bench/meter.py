#!/usr/bin/env python
"""Meter benchmark: the tick's database work at 1,000 and 10,000 open sessions, and enforcement.

    .venv/bin/python bench/meter.py [--sessions 1000,10000] [--ticks 50] [--pg-url ADMIN_URL]
                                    [--skip-sqlite] [--skip-postgres] [--skip-hub] [--hub-runs 20]
                                    [--quick] [--out PATH]

Prints ONE JSON document on stdout (progress goes to stderr).

``tick``: for each backend (SQLite in a temporary file; PostgreSQL in a
temporary database created and dropped through the admin URL) and each size,
N running sessions are bulk-inserted directly (paid_until spread evenly over
the next 24 hours, so about 1% fall inside the meter's 900 s look-ahead), then
the meter's per-tick database work — ``Meter.scan``: ``record_billing(now)``
(one UPDATE of every running session) and ``ending_by(now + lead)`` (one
indexed range query) — runs ``--ticks`` times, the clock advancing 5 s a tick.
Reported: p50 / p99 / max of the whole scan and of each statement, in ms;
also the reconciliation's database reads (twice all open sessions, plus
ended sessions holding GPUs), which run once a minute, not every tick.
PostgreSQL is measured with the schema as migrated and again with
``fillfactor`` 50 on ``credits_sessions`` (``--fillfactor``), which lets the
per-tick UPDATE be a HOT update; ``hot_update_share`` says how many were.

``enforcement``: a real hub (proxy, credits service with the default 5 s
meter, local servers) on a temporary PostgreSQL database; ``--hub-runs`` CPU
sessions run in waves of five, each bought for 15 minutes, then their paid times are
cut in the sessions table to end 0.7 s apart (the catalog sells nothing that
short). For each, the time from ``paid_until`` to the meter's settlement (the
decision, taken at the exact moment by the meter's timer, not at a tick) and
to the hub no longer listing the server (the overrun) is measured, p50/p99;
and, for comparison, the time a server takes to stop on a plain admin DELETE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select, text, update  # noqa: E402

from benchdb import (  # noqa: E402
    DEFAULT_PG_ADMIN_URL,
    log,
    percentiles,
    postgres_database,
    sqlite_database,
)
from jupyterhub_credits.ledger import Ledger  # noqa: E402
from jupyterhub_credits.ledger.schema import transfers  # noqa: E402
from jupyterhub_credits.service.meter import Meter  # noqa: E402
from jupyterhub_credits.sessions.schema import sessions  # noqa: E402
from jupyterhub_credits.sessions.store import SessionStore  # noqa: E402

TICK_SECONDS = 5
START = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)



# --- the tick's database work --------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def bulk_sessions(engine, count: int, now: datetime) -> None:
    """``count`` running sessions, ready a minute ago, ending evenly over the next 24 h."""
    rows = []
    for i in range(count):
        ready = now - timedelta(minutes=1)
        rows.append({
            "key": f"session:bench{i:06d}", "user": f"user{i:06d}", "server_name": "",
            "account": f"user:user{i:06d}", "image": "tf-2.21", "gpu_type": "a100", "gpus": 1,
            "rate_per_hour": 15_000, "held": 15_000, "state": "running",
            "requested_at": ready - timedelta(seconds=5), "ready_at": ready,
            "paid_until": now + timedelta(seconds=60 + (86_400 * i) // count),
            "billed_until": ready, "auto_extend": False,
            # Warned already, so that every tick does the same (steady-state) work.
            "warnings": [600, 60],
        })
    with engine.begin() as conn:
        for start in range(0, count, 5_000):
            conn.execute(insert(sessions), rows[start:start + 5_000])
        if conn.dialect.name == "postgresql":
            conn.execute(text("ANALYZE credits_sessions"))
        else:
            conn.execute(text("ANALYZE"))


def set_fillfactor(engine, percent: int) -> None:
    """What a migration ``ALTER TABLE credits_sessions SET (fillfactor = N)`` would give.

    Free room on each page lets PostgreSQL update ``billed_until`` in place
    (a HOT update: no new index entries), which is what the per-tick UPDATE does.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"ALTER TABLE credits_sessions SET (fillfactor = {int(percent)})"))
        conn.execute(text("VACUUM FULL ANALYZE credits_sessions"))


def hot_share(engine) -> float | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
        updated, hot = conn.execute(text(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE relname = 'credits_sessions'")).first()
    return round(hot / updated, 3) if updated else None


def measure_ticks(url: str, count: int, ticks: int, fillfactor: int | None = None) -> dict:
    clock = Clock(START)
    ledger = Ledger.open(url, clock=clock, upgrade=False)
    try:
        bulk_sessions(ledger.engine, count, clock())
        if fillfactor:
            set_fillfactor(ledger.engine, fillfactor)
        store = SessionStore(ledger)
        meter = Meter(sessions=store, hub=None, catalog=None, clock=clock)
        window = timedelta(seconds=meter.window)
        scans, bills, dues, due_counts = [], [], [], []
        for _ in range(3):  # warm the connection pool and caches
            meter.scan(clock())
        for _ in range(ticks):
            clock.now += timedelta(seconds=TICK_SECONDS)
            started = time.perf_counter()
            billed = store.record_billing(clock())
            between = time.perf_counter()
            due = store.ending_by(clock() + window)
            ended = time.perf_counter()
            assert billed == count
            scans.append(ended - started)
            bills.append(between - started)
            dues.append(ended - between)
            due_counts.append(len(due))
        reconcile = []
        for _ in range(5):
            started = time.perf_counter()
            store.open_session_summaries()
            store.open_session_summaries()
            store.ended_holding_gpus()
            reconcile.append(time.perf_counter() - started)
        return {
            "open_sessions": count,
            "fillfactor": fillfactor or ("default" if ledger.engine.dialect.name ==
                                         "postgresql" else None),
            "hot_update_share": hot_share(ledger.engine),
            "ticks": ticks,
            "scan": percentiles(scans),
            "record_billing": percentiles(bills),
            "ending_by": percentiles(dues),
            "due_per_tick": round(statistics.mean(due_counts), 1),
            "reconcile_reads": percentiles(reconcile),
        }
    finally:
        ledger.close()


# --- enforcement on a real hub --------------------------------------------------------------------


def measure_enforcement(admin_url: str, runs: int, baseline_runs: int = 5,
                        interval: float = 5.0) -> dict:
    """``runs`` CPU sessions on a real hub with the meter's default interval, in waves of
    five servers; each one's paid time is cut to end a little apart, and the moment of the
    settlement (the decision) and of the server's disappearance from the hub are taken for
    each. ``baseline_runs`` other servers are stopped by a plain admin DELETE: the time a
    server takes to go away by itself, which no meter can beat."""
    os.environ.setdefault("JUPYTERHUB_CREDITS_TEST_PG_URL", admin_url)
    from tests.hub import HubProcess
    from tests.waiting import wait_for

    def now():
        return datetime.now(timezone.utc)

    with postgres_database(admin_url) as url, tempfile.TemporaryDirectory() as workdir:
        hub = HubProcess(Path(workdir), db_url=url, meter_interval=interval)
        started = time.perf_counter()
        hub.start()
        log(f"hub up in {time.perf_counter() - started:.1f} s")
        ledger = Ledger.open(url)
        store = SessionStore(ledger)
        results, baseline, failed = [], [], 0
        try:
            # Waves of at most WAVE servers: two cores cannot start twenty Jupyter servers
            # at once in reasonable time, and the stops must not queue behind each other.
            users = [f"bench{i}" for i in range(runs + baseline_runs)]
            for first in range(0, len(users), WAVE):
                wave = users[first:first + WAVE]
                ready = start_servers(hub, ledger, wave)
                failed += len(wave) - len(ready)
                wave = ready
                log(f"{len(ready)} servers ready")
                expiring = [u for u in wave if int(u[5:]) < runs]
                for user in wave:
                    if user not in expiring:  # the server's own stop, for comparison
                        asked = time.perf_counter()
                        hub.api("DELETE", f"/users/{user}/server")
                        wait_for(lambda: hub.server(user) is None, timeout=60, interval=0.02,
                                 what="a plain stop")
                        baseline.append(time.perf_counter() - asked)
                if expiring:
                    results += expire_and_watch(hub, ledger, store, expiring, interval, now)
                    log(f"{len(results)} sessions measured; last {results[-1]}")
        finally:
            ledger.close()
            hub.stop()
    decisions = [r["decision_s"] for r in results]
    overruns = [r["overrun_s"] for r in results]
    return {
        "meter_interval_s": interval,
        "sessions": runs,
        "what": "seconds from paid_until to the meter's settlement (decision_s) and to the hub "
                "no longer listing the server (overrun_s: the decision, the stop request and "
                "the server's own shutdown; the listing is polled every ~20 ms)",
        "decision_s": percentiles_s(decisions),
        "overrun_s": percentiles_s(overruns),
        "plain_stop_s": {**percentiles_s(baseline), "runs": len(baseline),
                         "what": "admin DELETE to gone: the server's own shutdown time"},
        "spawns_failed": failed,
        "every_end_at_paid_until": all(r["ended_at_is_paid_until"] for r in results),
        "every_reason_expired": all(r["end_reason"] == "expired" for r in results),
        "runs": results,
    }


WAVE = 5


def start_servers(hub, ledger, users) -> list[str]:
    """Start each user's CPU server; those that became ready."""
    for user in users:
        ledger.grant(user, 10_000, key=f"grant:{user}", reason="bench", actor="bench")
        hub.api("POST", f"/users/{user}")
        response = hub.api("POST", f"/users/{user}/server", json={"user_options": {
            "image": "tf-2.21-cpu", "gpu_type": "none", "hours": "0.25"}})
        assert response.status_code in (201, 202), response.text
    ready = []
    for user in users:
        try:
            hub.wait_ready(user, timeout=150)
            ready.append(user)
        except TimeoutError:  # a loaded machine: past the spawner's start_timeout
            log(f"{user}'s server did not start; left out")
            hub.api("DELETE", f"/users/{user}/server")
    return ready


def expire_and_watch(hub, ledger, store, users, interval, now) -> list[dict]:
    """Cut each paid time to end 0.7 s after the previous one, later than two ticks from
    now (so a tick reads the new paid_until and arms its timer); watch the hub's listing
    every ~20 ms for each server's disappearance; read each settlement's moment."""
    import threading

    from tests.waiting import wait_for

    first_end = now() + timedelta(seconds=2 * interval + 2)
    measured = {}
    with ledger.engine.begin() as conn:
        for i, user in enumerate(users):
            session = store.open_session(user)
            paid_until = first_end + timedelta(seconds=0.7 * i)
            conn.execute(update(sessions).where(sessions.c.key == session.key)
                         .values(paid_until=paid_until))
            measured[user] = {"key": session.key, "paid_until": paid_until}
    gone_at: dict[str, datetime] = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            response = hub.api("GET", "/users?state=active&limit=200")
            if response.ok:
                active, seen = {u["name"] for u in response.json()}, now()
                for user in measured:
                    if user not in active and user not in gone_at:
                        gone_at[user] = seen
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wait_for(lambda: len(gone_at) == len(users), timeout=90, interval=0.2,
                 what="every expired server gone")
    finally:
        done.set()
        watcher.join()
    results = []
    for user, entry in measured.items():
        ended = wait_for(lambda: (s := store.get(entry["key"])).state == "ended" and s,
                         timeout=30, what="settlement")
        with ledger.engine.connect() as conn:
            settled_at = conn.execute(select(transfers.c.created_at).where(
                transfers.c.key == f"{entry['key']}:settle:0")).scalar()
        results.append({
            "decision_s": round((settled_at - entry["paid_until"]).total_seconds(), 3),
            "overrun_s": round((gone_at[user] - entry["paid_until"]).total_seconds(), 3),
            "ended_at_is_paid_until": ended.ended_at == entry["paid_until"],
            "end_reason": ended.end_reason,
        })
    return results


def percentiles_s(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

    return {"p50": round(statistics.median(ordered), 3), "p99": at(0.99), "max": ordered[-1],
            "min": ordered[0]}


# --- main --------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1000,10000",
                        help="comma-separated numbers of open running sessions")
    parser.add_argument("--ticks", type=int, default=50, help="ticks measured per size")
    parser.add_argument("--pg-url", default=os.environ.get("JUPYTERHUB_CREDITS_TEST_PG_URL",
                                                           DEFAULT_PG_ADMIN_URL))
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-hub", action="store_true", help="skip the real-hub enforcement run")
    parser.add_argument("--hub-runs", type=int, default=20,
                        help="expiring sessions measured at once on the real hub")
    parser.add_argument("--out", help="also write the JSON document to this file")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 sessions, 10 ticks, 8 expiring sessions (a few minutes)")
    parser.add_argument("--fillfactor", type=int, default=50,
                        help="also measure PostgreSQL with this fillfactor on credits_sessions "
                             "(a proposed migration); 0 to skip")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.ticks, args.hub_runs = "1000", 10, 8
    sizes = [int(n) for n in args.sessions.split(",") if n.strip()]

    report = {"benchmark": "meter", "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(),
              "tick_interval_s": TICK_SECONDS, "tick": {}}
    with tempfile.TemporaryDirectory() as directory:
        for backend in ("sqlite", "postgresql"):
            if (backend == "sqlite" and args.skip_sqlite) or \
                    (backend == "postgresql" and args.skip_postgres):
                continue
            report["tick"][backend] = []
            variants = [None] if backend == "sqlite" else [None, args.fillfactor]
            for fillfactor in filter(lambda v: v != 0, variants):
                for count in sizes:
                    log(f"{backend}: {count} open sessions, {args.ticks} ticks, "
                        f"fillfactor {fillfactor or 'default'}")
                    if backend == "sqlite":
                        database = sqlite_database(directory, f"meter_{count}")
                    else:
                        database = postgres_database(args.pg_url)
                    with database as url:
                        result = measure_ticks(url, count, args.ticks, fillfactor)
                    log(f"{backend} {count}: scan {result['scan']}")
                    report["tick"][backend].append(result)
    if not args.skip_hub and not args.skip_postgres:
        log("enforcement on a real hub")
        report["enforcement"] = measure_enforcement(args.pg_url, args.hub_runs)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
