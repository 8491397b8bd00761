#!/usr/bin/env python
"""Ledger benchmark: write throughput and latency, statements per operation, verify() time.

    .venv/bin/python bench/ledger.py [--quick] [--pg-url ADMIN_URL] [--skip-sqlite|--skip-postgres]
                                     [--out PATH]

Prints ONE JSON document on stdout (progress goes to stderr). For each backend
(SQLite in a temporary file; PostgreSQL in a temporary database created and
dropped through the admin URL) it measures, for a fixed duration each:

* ``transfers``: a grant/deduct mix, every operation its own transaction
  through the public ``Ledger`` API, as production calls it;
* ``hold_post``: hold -> post (full) cycles;

with 1 writer, 8 writer *processes* (each its own Ledger and connections) and
8 writer *threads* sharing one Ledger (the GIL bounds these). Writers use
their own accounts (different users), so the figures are not a hot-row test.

On PostgreSQL the ledger writes through its server functions (migration 0008);
``python_path`` measures the same 1-writer and 8-process loads through the Python
path (``server_functions=False``), in the same run. Right before each 1-writer and
8-process measurement, ``pgbench`` runs on a scratch database with as many clients
for as long (see ``pgbench``), and each entry gets ``pgbench_tps`` and
``ratio_to_pgbench`` = transfers_per_s / pgbench_tps.
Then it counts the statements and round trips each operation costs, times a
deduct with many live lots, and times ``verify()`` over a ledger of
1,000,000 transfers (100,000 with --quick) bulk-loaded directly (COPY on
PostgreSQL, executemany on SQLite) in a consistent state, checking it is ok.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import sqlalchemy
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from benchdb import (  # noqa: E402
    DEFAULT_PG_ADMIN_URL,
    WaitSampler,
    log,
    machine_cpu,
    percentiles,
    postgres_database,
    sqlite_database,
    wait_for_quiet,
)
from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.ledger import database as ledger_database
from jupyterhub_credits.ledger.verify import verify

CONFIGS = [  # (label, processes, threads per process)
    ("1_writer", 1, 1),
    ("8_processes", 8, 1),
    ("8_threads", 1, 8),
]
ACCOUNTS_PER_WRITER = 4
QUIET_WAIT = 0.0  # --wait-for-quiet
AMOUNT = 1_000



# --- writers ---------------------------------------------------------------------------------


class _RetryCounter(logging.Handler):
    """Counts the ledger's "retrying ledger transaction" messages (deadlocks, serialization)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        self.count += 1


def _one_thread(ledger: Ledger, scenario: str, names: list[str], prefix: str, duration: float,
                warmup: int, ready: threading.Barrier, start: threading.Barrier,
                out: dict) -> None:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: Counter = Counter()
    i = 0

    def step(timed: bool) -> int:
        nonlocal i
        name = names[i % len(names)]
        round_ = i // len(names)
        i += 1
        if scenario == "transfers":
            # Grant then deduct the same amount on each account in turn: the balance (and
            # the number of live lots) stays steady, so the run measures a steady state.
            calls = [("grant", lambda: ledger.grant(name, AMOUNT, key=f"{prefix}-{i}",
                                                    reason="bench", actor="bench"))] \
                if round_ % 2 == 0 else \
                [("deduct", lambda: ledger.deduct(name, AMOUNT, key=f"{prefix}-{i}",
                                                  reason="bench", actor="bench"))]
        else:
            hold_key = f"{prefix}-{i}-h"
            calls = [("hold", lambda: ledger.hold(name, AMOUNT, key=hold_key, actor="bench")),
                     ("post", lambda: ledger.post(hold_key, key=f"{prefix}-{i}-p",
                                                  actor="bench"))]
        done = 0
        for op, call in calls:
            began = time.perf_counter()
            try:
                call()
            except Exception as error:  # noqa: BLE001 - counted and reported
                errors[f"{op}: {type(error).__name__}"] += 1
                return done
            if timed:
                latencies[op].append(time.perf_counter() - began)
            done += 1
        return done

    for _ in range(warmup):
        step(timed=False)
    ready.wait()
    start.wait()
    began = time.perf_counter()
    deadline = began + duration
    cycles = transfers = 0
    while time.perf_counter() < deadline:
        moved = step(timed=True)
        transfers += moved
        cycles += moved == (2 if scenario == "hold_post" else 1)
    out.update(latencies=dict(latencies), errors=errors, transfers=transfers, cycles=cycles,
               seconds=time.perf_counter() - began)
    # A thread's server-function connection closes when the thread ends; keep it (and its
    # backend, whose CPU the parent reads after the run) until the process finishes.
    out["_keep_open"] = getattr(ledger._functions._local, "connection", None)


def writer_process(url: str, scenario: str, prefix: str, threads: int, duration: float,
                   warmup: int, ready, start, finish, results, engine_kwargs: dict,
                   variant: str = "as_is") -> None:
    """One writer process: ``threads`` threads sharing one Ledger, each with its own accounts.

    ``variant``: "python_path" writes through the Python path on PostgreSQL
    (``server_functions=False``). Diagnostics, never for production, also on the Python
    path: "no_pre_ping" opens the engine without pool_pre_ping; "no_readback" also skips
    the read of the transfer after each commit, by answering a stub instead.
    """
    retries = _RetryCounter()
    logger = logging.getLogger("jupyterhub_credits.ledger.database")
    logger.addHandler(retries)
    logger.setLevel(logging.DEBUG)
    if variant in ("no_pre_ping", "no_readback"):
        engine_kwargs = {**engine_kwargs, "pool_pre_ping": False}
    if variant != "as_is" and url.startswith("postgresql"):
        engine_kwargs = {**engine_kwargs, "server_functions": False}
    ledger = Ledger.open(url, upgrade=False, **engine_kwargs)
    if variant == "no_readback":
        ledger.get_transfer = lambda ref: ref  # TransferResult(transfer=<the id>)
    try:
        names = [[f"{prefix}-t{t}-a{a}" for a in range(ACCOUNTS_PER_WRITER)]
                 for t in range(threads)]
        for t, own in enumerate(names):
            for name in own:
                funds = 10**12 if scenario == "hold_post" else 5 * AMOUNT
                ledger.grant(name, funds, key=f"fund-{name}", reason="bench", actor="bench")
        local_ready = threading.Barrier(threads + 1)
        local_start = threading.Barrier(threads + 1)
        outs = [{} for _ in range(threads)]
        workers = [threading.Thread(target=_one_thread, args=(
            ledger, scenario, names[t], f"{prefix}-t{t}", duration, warmup, local_ready,
            local_start, outs[t])) for t in range(threads)]
        for worker in workers:
            worker.start()
        local_ready.wait()  # this process's threads are warm (connections, funded accounts)
        ready.wait()  # so is every other process
        start.wait()  # the parent says go
        local_start.wait()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        for worker in workers:
            worker.join()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        keep_open = [out.pop("_keep_open", None) for out in outs]  # noqa: F841 - see _one_thread
        results.put({"outs": outs, "cpu_s": cpu, "retries": retries.count})
        finish.wait()  # keep connections open until the parent has sampled server CPU
    finally:
        ledger.close()


def _postgres_cpu(database: str | None) -> dict[str, float]:
    """CPU seconds so far of PostgreSQL's processes: backends serving ``database`` (ours),
    background processes (WAL writer, checkpointer, ...), and backends of other databases."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {"backends": 0.0, "background": 0.0, "other_databases": 0.0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if not stat[stat.index("(") + 1:stat.rindex(")")].startswith("postgres"):
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        # A client backend's title: "postgres: <cluster>: <user> <database> <host(port)> <state>".
        words = title.split()
        if database and database in words:
            out["backends"] += cpu
        elif any(w.endswith(")") and "(" in w or w == "[local]" for w in words[3:]):
            out["other_databases"] += cpu
        else:
            out["background"] += cpu
    return out


def measure(url: str, scenario: str, label: str, processes: int, threads: int, duration: float,
            warmup: int, engine_kwargs: dict | None = None, variant: str = "as_is",
            admin_url: str | None = None) -> dict:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(processes + 1)
    start = ctx.Barrier(processes + 1)
    finish = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    prefix = f"{scenario}-{label}-{uuid.uuid4().hex[:6]}"
    procs = [ctx.Process(target=writer_process, args=(
        url, scenario, f"{prefix}-p{p}", threads, duration, warmup, ready, start, finish, results,
        engine_kwargs or {}, variant), daemon=True) for p in range(processes)]
    postgres = url.startswith("postgresql")
    database = make_url(url).database if postgres else None
    for proc in procs:
        proc.start()
    sampler = WaitSampler(admin_url, database) if postgres and admin_url else None
    ready.wait(timeout=300)
    busy_before = wait_for_quiet(QUIET_WAIT)
    start.wait(timeout=60)
    if sampler:
        sampler.start()
    load_before = os.getloadavg()
    wall0, pg0, machine0 = time.perf_counter(), _postgres_cpu(database), machine_cpu()
    reports = [results.get(timeout=duration + 300) for _ in procs]
    wall, pg1, machine1 = time.perf_counter() - wall0, _postgres_cpu(database), machine_cpu()
    load_after = os.getloadavg()
    waits = sampler.result() if sampler else None
    finish.wait(timeout=60)
    for proc in procs:
        proc.join(60)

    latencies: dict[str, list[float]] = defaultdict(list)
    errors: Counter = Counter()
    transfers = cycles = 0
    seconds = []
    for report in reports:
        for out in report["outs"]:
            for op, samples in out["latencies"].items():
                latencies[op].extend(samples)
            errors.update(out["errors"])
            transfers += out["transfers"]
            cycles += out["cycles"]
            seconds.append(out["seconds"])
    elapsed = max(seconds)
    python_cpu = sum(r["cpu_s"] for r in reports)
    cores = len(os.sched_getaffinity(0))
    capacity = wall * cores
    pg = {k: pg1[k] - pg0[k] for k in pg0}
    busy = machine1[0] - machine0[0]
    ours = python_cpu + (pg["backends"] + pg["background"] if postgres else 0)
    result = {
        "writers": processes * threads, "processes": processes, "threads_per_process": threads,
        "seconds": round(elapsed, 2),
        "transfers": transfers,
        "transfers_per_s": round(transfers / elapsed, 1),
    }
    if scenario == "hold_post":
        result["cycles"] = cycles
        result["cycles_per_s"] = round(cycles / elapsed, 1)
        all_ops = [s for op in ("hold", "post") for s in latencies[op]]
    else:
        all_ops = [s for op in ("grant", "deduct") for s in latencies[op]]
    result["latency"] = {op: percentiles(s) for op, s in sorted(latencies.items())}
    result["latency"]["any"] = percentiles(all_ops)
    result["errors"] = dict(errors)
    result["retried_transactions"] = sum(r["retries"] for r in reports)
    # Where the machine's CPU went during the run (shares of cores x wall time).
    cpu = {"python_writers": python_cpu}
    if postgres:
        cpu["postgres_our_backends"] = pg["backends"]
        cpu["postgres_background"] = pg["background"]
    cpu["other_processes"] = max(0.0, busy - ours)
    cpu["idle"] = max(0.0, capacity - busy)
    result["cpu_share"] = {k: round(v / capacity, 3) for k, v in cpu.items()}
    result["cpu_ms_per_transfer"] = {
        k: round(1000 * v / max(1, transfers), 2) for k, v in cpu.items()
        if k in ("python_writers", "postgres_our_backends", "postgres_background")}
    if waits is not None:
        result["server_backends_by_state"] = waits
    if busy_before is not None:
        result["machine_busy_share_before_start"] = busy_before
    # If the run were bound by CPU alone: what the cores could do at this CPU cost per transfer.
    cost = sum(result["cpu_ms_per_transfer"].values())
    result["cpu_bound_ceiling_transfers_per_s"] = round(cores * 1000 / cost, 1) if cost else None
    result["load_average"] = {"before": _load(load_before), "after": _load(load_after)}
    return result


def _load(load: tuple[float, float, float]) -> list[float]:
    return [round(x, 2) for x in load]


# --- pgbench: what this PostgreSQL does with simple transactions, in the same run ----------------

#: ``simple-update``: per transaction, UPDATE one random pgbench_accounts row, SELECT
#: it and INSERT a pgbench_history row, inside BEGIN/END: the nearest pgbench has to a
#: transfer (update an account, append a record). The default tpcb-like also updates
#: one of ``scale`` branch rows, so at scale 1 all clients queue on one row, which
#: measures that lock, not the server. ``-M prepared``: the ledger's writers use
#: prepared statements too (psycopg prepares a statement it sends repeatedly).
PGBENCH_ARGS = ["-b", "simple-update", "-M", "prepared"]
PGBENCH_SCALE = 1
#: Also measured, for the transfers: pgbench's default script (what "pgbench tps" means
#: when nothing else is said), with its branch-row queue at scale 1.
PGBENCH_TPCB_ARGS = ["-b", "tpcb-like", "-M", "prepared"]


@contextlib.contextmanager
def pgbench_database(admin_url: str):
    """A scratch database initialised by ``pgbench -i``, dropped afterwards; yields a
    function running pgbench there: ``run(clients, seconds)`` -> dict."""
    executable = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    url = make_url(ledger_database.normalize_url(admin_url))
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    name = f"credits_pgbench_{uuid.uuid4().hex[:10]}"
    connection = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432),
                  "-U", url.username or "postgres"]
    admin = create_engine(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        subprocess.run([executable, "-i", "-q", "-s", str(PGBENCH_SCALE), *connection, name],
                       check=True, capture_output=True, text=True, env=env)

        def run(clients: int, seconds: float, arguments=PGBENCH_ARGS) -> dict:
            threads = max(1, min(clients, len(os.sched_getaffinity(0))))
            command = [executable, *arguments, "-c", str(clients), "-j", str(threads),
                       "-T", str(max(1, round(seconds))), *connection, name]
            load_before, busy0 = os.getloadavg(), machine_cpu()
            done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            load_after, busy1 = os.getloadavg(), machine_cpu()
            tps = re.search(r"tps = ([0-9.]+)", done.stdout)
            latency = re.search(r"latency average = ([0-9.]+) ms", done.stdout)
            return {
                "clients": clients, "threads": threads, "seconds": max(1, round(seconds)),
                "tps": round(float(tps.group(1)), 1),
                "latency_average_ms": float(latency.group(1)) if latency else None,
                "machine_busy_share": round((busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1]),
                                            3),
                "load_average": {"before": _load(load_before), "after": _load(load_after)},
            }

        yield run
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def with_pgbench(result: dict, pgbench: dict, tpcb_like: dict | None = None) -> dict:
    """Add pgbench's figure, measured right before, and the ledger's ratio to it (and to
    pgbench's default tpcb-like script, where it was measured too)."""
    result["pgbench"] = pgbench
    result["pgbench_tps"] = pgbench["tps"]
    result["ratio_to_pgbench"] = round(result["transfers_per_s"] / pgbench["tps"], 3)
    if tpcb_like is not None:
        result["pgbench_tpcb_like"] = tpcb_like
        result["ratio_to_pgbench_tpcb_like"] = round(
            result["transfers_per_s"] / tpcb_like["tps"], 3)
    return result


# --- statements and round trips per operation -------------------------------------------------


def count_statements(url: str, **options) -> dict:
    """What one operation of each kind sends to the database (steady state, warm caches).

    A server-function call is one statement in autocommit: one round trip, no BEGIN or
    COMMIT (``function_calls``); statements through SQLAlchemy are counted as before.
    """
    ledger = Ledger.open(url, upgrade=False, **options)
    postgres = ledger.engine.dialect.name == "postgresql"
    tally = Counter()
    shapes: list[str] = []
    original_call = ledger._functions.call

    def counted_call(operation, params):
        tally["function_calls"] += 1
        shapes.append(f"SELECT credits_ledger_{operation}()")
        return original_call(operation, params)

    ledger._functions.call = counted_call

    @event.listens_for(ledger.engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):
        tally["statements"] += 1
        words = statement.split()
        verb = words[0].upper()
        table = next((w for w in words if w.startswith("credits_")), "")
        lock = " FOR UPDATE" if "FOR UPDATE" in statement or "FOR NO KEY UPDATE" in statement \
            else ""
        shapes.append(f"{verb} {table.split('.')[0].strip(',(')}{lock}".strip())

    @event.listens_for(ledger.engine, "begin")
    def _begin(conn):
        tally["transactions"] += 1

    @event.listens_for(ledger.engine, "commit")
    def _commit(conn):
        tally["commits"] += 1

    @event.listens_for(ledger.engine, "rollback")
    def _rollback(conn):
        tally["rollbacks"] += 1

    @event.listens_for(ledger.engine.pool, "checkout")
    def _checkout(*_args):
        tally["pool_checkouts"] += 1

    name = f"stmt-{uuid.uuid4().hex[:6]}"
    ledger.grant(name, 10**9, key=f"{name}-fund", reason="bench", actor="bench")
    ledger.hold(name, AMOUNT, key=f"{name}-h0", actor="bench")
    ledger.post(f"{name}-h0", key=f"{name}-p0", actor="bench")
    ops = {
        "grant": lambda i: ledger.grant(name, AMOUNT, key=f"{name}-g{i}", reason="b", actor="b"),
        "deduct": lambda i: ledger.deduct(name, AMOUNT, key=f"{name}-d{i}", reason="b",
                                          actor="b"),
        "hold": lambda i: ledger.hold(name, AMOUNT, key=f"{name}-h{i}", actor="b"),
        "post": lambda i: ledger.post(f"{name}-h{i}", key=f"{name}-p{i}", actor="b"),
        "duplicate_grant": lambda i: ledger.grant(name, AMOUNT, key=f"{name}-g{i}", reason="b",
                                                  actor="b"),
        # Grants to an account this process never spends from (earnings, say).
        "grant_only_account": lambda i: ledger.grant(f"{name}-earner", AMOUNT,
                                                     key=f"{name}-e{i}", reason="b", actor="b"),
    }
    out = {}
    repeats = 20
    for op, call in ops.items():
        tally.clear()
        for i in range(1, repeats + 1):
            shapes.clear()
            call(i)
        per_op = {k: v / repeats for k, v in tally.items()}
        entry = {k: round(v, 2) for k, v in sorted(per_op.items())}
        if postgres:
            # psycopg sends BEGIN and COMMIT/ROLLBACK as their own round trips; a function
            # call is one (autocommit); pool_pre_ping, where set, costs one per checkout.
            pre_ping = getattr(ledger.engine.pool, "_pre_ping", False)
            entry["round_trips"] = round(per_op.get("statements", 0)
                                         + 2 * per_op.get("transactions", 0)
                                         + per_op.get("function_calls", 0)
                                         + (per_op.get("pool_checkouts", 0) if pre_ping else 0),
                                         2)
        else:
            entry["round_trips"] = None  # in-process: BEGIN is among the statements
        entry["sequence"] = list(shapes)
        out[op] = entry
    ledger.close()
    return out


def deduct_with_live_lots(url: str, lot_counts: list[int], samples: int) -> dict:
    """Deduct latency when the account holds many lots with credits left (e.g. many earnings)."""
    ledger = Ledger.open(url, upgrade=False)
    out = {}
    try:
        for lots in lot_counts:
            name = f"lots-{lots}-{uuid.uuid4().hex[:6]}"
            # One big lot drawn first (soonest expiry), then ``lots - 1`` small ones that stay.
            ledger.grant(name, samples * AMOUNT * 2, key=f"{name}-big", reason="b", actor="b",
                         expires_at=_soon())
            _bulk_lots(ledger, name, lots - 1)
            times = []
            for i in range(samples):
                began = time.perf_counter()
                ledger.deduct(name, AMOUNT, key=f"{name}-d{i}", reason="b", actor="b")
                times.append(time.perf_counter() - began)
            out[str(lots)] = percentiles(times)
        report = verify(ledger.engine)
        assert report.ok, report.to_dict()
    finally:
        ledger.close()
    return out


def _soon():
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(days=365)


def _bulk_lots(ledger: Ledger, name: str, count: int) -> None:
    """``count`` more 10-unit grant lots for ``name``, written directly in one transaction
    (a consistent state: transfers, lots and the cached balance)."""
    from datetime import datetime, timezone

    from sqlalchemy import insert, select, update

    from jupyterhub_credits.ledger import ISSUANCE, account_name
    from jupyterhub_credits.ledger.schema import accounts, lots, transfers

    if count <= 0:
        return
    canonical = account_name(name)
    now = datetime.now(timezone.utc)
    with ledger.engine.begin() as conn:
        ids = dict(conn.execute(select(accounts.c.name, accounts.c.id)
                                .where(accounts.c.name.in_([canonical, ISSUANCE]))).all())
        transfer_ids = conn.execute(
            insert(transfers).returning(transfers.c.id, sort_by_parameter_order=True),
            [{"key": f"{canonical}-lot{i}", "kind": "grant", "debit_account_id": ids[ISSUANCE],
              "credit_account_id": ids[canonical], "amount": 10, "created_at": now,
              "actor": "bench", "reason": "", "metadata": None, "request_hash": None}
             for i in range(count)],
        ).scalars().all()
        conn.execute(insert(lots), [{"account_id": ids[canonical], "transfer_id": t,
                                     "amount": 10, "remaining": 10, "reserved": 0,
                                     "expires_at": None} for t in transfer_ids])
        conn.execute(update(accounts).where(accounts.c.id == ids[canonical])
                     .values(balance=accounts.c.balance + 10 * count))


# --- a big consistent ledger, loaded in bulk, for verify() ---------------------------------------

TRANSFER_COLUMNS = ("id", "key", "kind", "debit_account_id", "credit_account_id", "amount",
                    "created_at", "actor", "reason", "metadata", "request_hash", "pending_id",
                    "reversal_of")
TABLES = {
    "credits_accounts": ("id", "name", "kind", "balance", "reserved", "created_at",
                         "lifetime_earned", "lifetime_spent"),
    "credits_transfers": TRANSFER_COLUMNS,
    "credits_lots": ("id", "account_id", "transfer_id", "amount", "remaining", "reserved",
                     "expires_at"),
    "credits_holds": ("transfer_id", "account_id", "amount", "state", "posted", "timeout_at",
                      "resolved_at"),
    "credits_hold_lots": ("hold_id", "lot_id", "amount"),
    "credits_lot_movements": ("id", "lot_id", "transfer_id", "amount"),
}
BLOCKS_PER_ACCOUNT = 100  # 10 transfers each, + a grant and a pending hold per account
GRANT = 10**9
DEDUCT = 500
STAMP = "2026-01-01 12:00:00.000000"


def ledger_rows(accounts: int, first_account: int, issuance: int, usage: int):
    """Yield, per account, a dict of table -> rows: a ledger state every verify check accepts.

    Per account: a grant (one lot), then blocks of: two deducts, a hold partially posted
    (post + void of the remainder), a hold voided, a hold fully posted, and the reversal of
    the first deduct (which credits a new lot); finally one pending hold. Debits draw from
    the grant's lot (lot_movements); holds reserve it (hold_lots).
    """
    ids = {"transfer": 0, "lot": 0, "movement": 0}

    def next_id(kind: str) -> int:
        ids[kind] += 1
        return ids[kind]

    def transfer(kind, debit, credit, amount, *, keyed=True, pending=None, reversal=None):
        tid = next_id("transfer")
        return (tid, f"bulk-{tid}" if keyed else None, kind, debit, credit, amount, STAMP,
                "bench", "", None, None, pending, reversal)

    for a in range(accounts):
        acc = first_account + a
        rows = {table: [] for table in TABLES}
        grant = transfer("grant", issuance, acc, GRANT)
        rows["credits_transfers"].append(grant)
        lot = next_id("lot")
        drawn = 0
        extra_lots = []

        def add(kind, debit, credit, amount, *, rows=rows, draw_from=None, **options):
            row = transfer(kind, debit, credit, amount, **options)
            rows["credits_transfers"].append(row)
            if draw_from is not None:
                rows["credits_lot_movements"].append(
                    (next_id("movement"), draw_from, row[0], amount))
            return row[0]

        def hold(amount, state, posted, *, rows=rows, acc=acc, lot=lot):
            hold_id = add("hold", acc, usage, amount)
            rows["credits_holds"].append(
                (hold_id, acc, amount, state, posted, None, None if state == "pending" else STAMP))
            rows["credits_hold_lots"].append((hold_id, lot, amount))
            return hold_id

        for _ in range(BLOCKS_PER_ACCOUNT):
            first_deduct = add("deduct", acc, issuance, DEDUCT, draw_from=lot)
            add("deduct", acc, issuance, DEDUCT, draw_from=lot)
            held = hold(3000, "posted", 2000)
            add("post", acc, usage, 2000, pending=held, draw_from=lot)
            add("void", acc, usage, 1000, keyed=False, pending=held)
            held = hold(1500, "voided", 0)
            add("void", acc, usage, 1500, pending=held)
            held = hold(1000, "posted", 1000)
            add("post", acc, usage, 1000, pending=held, draw_from=lot)
            reversal = add("reverse", issuance, acc, DEDUCT, reversal=first_deduct)
            extra_lots.append((next_id("lot"), acc, reversal, DEDUCT, DEDUCT, 0, None))
            drawn += 2 * DEDUCT + 2000 + 1000
        hold(1000, "pending", 0)
        remaining = GRANT - drawn
        rows["credits_lots"].append((lot, acc, grant[0], GRANT, remaining, 1000, None))
        rows["credits_lots"].extend(extra_lots)
        balance = remaining + DEDUCT * BLOCKS_PER_ACCOUNT
        # No earns; each block posts 2000 + 1000 (its deduct reversals leave spending alone).
        rows["credits_accounts"].append((acc, f"user:bulk{a}", "user", balance, 1000, STAMP,
                                         0, 3000 * BLOCKS_PER_ACCOUNT))
        yield rows


def _system_ids(conn) -> tuple[int, int, int]:
    ids = dict(conn.execute(text("SELECT name, id FROM credits_accounts WHERE kind = 'system'"))
               .all())
    first = conn.execute(text("SELECT COALESCE(MAX(id), 0) + 1 FROM credits_accounts")).scalar()
    return ids["system:issuance"], ids["system:usage"], first


def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    return str(value)


def build_postgres(url: str, accounts: int) -> int:
    import psycopg

    engine = ledger_database.make_engine(url)
    with engine.connect() as conn:
        issuance, usage, first = _system_ids(conn)
    engine.dispose()
    buffers = {table: [] for table in TABLES}
    count = 0
    for rows in ledger_rows(accounts, first, issuance, usage):
        for table, table_rows in rows.items():
            buffers[table].extend("\t".join(map(_copy_text, row)) + "\n" for row in table_rows)
        count += len(rows["credits_transfers"])
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        # The rows are consistent by construction: skip the per-row foreign-key triggers.
        conn.execute("SET session_replication_role = replica")
        for table, columns in TABLES.items():
            with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                lines = buffers.pop(table)
                for i in range(0, len(lines), 50_000):
                    copy.write("".join(lines[i:i + 50_000]))
        for table, column in (("credits_accounts", "id"), ("credits_transfers", "id"),
                              ("credits_lots", "id"), ("credits_lot_movements", "id")):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                         f"(SELECT MAX({column}) FROM {table}))")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return count


def build_sqlite(url: str, accounts: int) -> int:
    path = make_url(url).database
    engine = ledger_database.make_engine(url)
    with engine.connect() as conn:
        issuance, usage, first = _system_ids(conn)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    count = 0
    statements = {table: f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                         f"({', '.join('?' * len(columns))})" for table, columns in TABLES.items()}
    batch = defaultdict(list)
    for n, rows in enumerate(ledger_rows(accounts, first, issuance, usage), 1):
        for table, table_rows in rows.items():
            batch[table].extend(table_rows)
        count += len(rows["credits_transfers"])
        if n % 100 == 0:
            for table in TABLES:
                conn.executemany(statements[table], batch.pop(table, []))
    for table in TABLES:
        conn.executemany(statements[table], batch.pop(table, []))
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return count


def verify_big(make_db, builder, transfers: int) -> dict:
    accounts = max(1, round(transfers / (10 * BLOCKS_PER_ACCOUNT + 2)))
    with make_db() as url:
        began = time.perf_counter()
        count = builder(url, accounts)
        build_s = time.perf_counter() - began
        engine = ledger_database.make_engine(url)
        try:
            began = time.perf_counter()
            report = verify(engine)
            verify_s = time.perf_counter() - began
        finally:
            engine.dispose()
    return {"transfers": report.transfers, "accounts": report.accounts,
            "transfers_loaded": count, "build_s": round(build_s, 2),
            "verify_s": round(verify_s, 2), "ok": report.ok,
            "problems": {k: v["problems"] for k, v in report.to_dict()["checks"].items()
                         if v["problems"]}}


# --- the machine ------------------------------------------------------------------------------


def machine(pg_admin_url: str | None) -> dict:
    info = {
        "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(), "memory_gib": _memory_gib(), "platform": platform.platform(),
        "python": platform.python_version(), "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
    }
    with contextlib.suppress(Exception):
        import psycopg

        info["psycopg"] = psycopg.__version__
    if pg_admin_url:
        with contextlib.suppress(Exception):
            engine = create_engine(ledger_database.normalize_url(pg_admin_url))
            with engine.connect() as conn:
                info["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
                info["postgresql_settings"] = dict(conn.execute(text(
                    "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                    "('synchronous_commit', 'fsync', 'wal_sync_method', 'shared_buffers', "
                    "'max_connections', 'commit_delay', 'full_page_writes')")).all())
            engine.dispose()
    return info


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


# --- main -------------------------------------------------------------------------------------


#: The loads compared with pgbench (same number of clients as writer processes).
PGBENCH_CONFIGS = ("1_writer", "8_processes")


def run_backend(backend: str, make_db, builder, args) -> dict:
    out: dict = {"throughput": {}}
    postgres = backend == "postgresql"
    admin_url = args.pg_url if postgres else None
    with make_db() as url, (pgbench_database(args.pg_url) if postgres
                            else contextlib.nullcontext()) as pgbench:
        if postgres:  # what the default path is on this database
            probe = Ledger.open(url, upgrade=False)
            out["server_functions"] = probe.uses_server_functions
            probe.close()
        for scenario in ("transfers", "hold_post"):
            out["throughput"][scenario] = {}
            for label, processes, threads in CONFIGS:
                baseline = tpcb_like = None
                if pgbench and label in PGBENCH_CONFIGS:
                    log(f"pgbench {processes} client(s) ({args.duration}s)")
                    baseline = pgbench(processes, args.duration)
                    if scenario == "transfers":
                        log(f"pgbench tpcb-like {processes} client(s) ({args.duration}s)")
                        tpcb_like = pgbench(processes, args.duration, PGBENCH_TPCB_ARGS)
                log(f"{backend} {scenario} {label} ({args.duration}s)")
                result = measure(url, scenario, label, processes, threads, args.duration,
                                 args.warmup, admin_url=admin_url)
                out["throughput"][scenario][label] = \
                    with_pgbench(result, baseline, tpcb_like) if baseline else result
        if postgres:
            # The same loads through the Python path, each right after its own pgbench.
            out["python_path"] = {"throughput": {}}
            for scenario in ("transfers", "hold_post"):
                out["python_path"]["throughput"][scenario] = {}
                for label, processes, threads in CONFIGS:
                    if label not in PGBENCH_CONFIGS:
                        continue
                    log(f"pgbench {processes} client(s) ({args.duration}s)")
                    baseline = pgbench(processes, args.duration)
                    log(f"postgresql python path {scenario} {label} ({args.duration}s)")
                    out["python_path"]["throughput"][scenario][label] = with_pgbench(measure(
                        url, scenario, f"py-{label}", processes, threads, args.duration,
                        args.warmup, variant="python_path", admin_url=admin_url), baseline)
            out["vs_pgbench"] = {
                path: {scenario: {label: figures[scenario][label]["ratio_to_pgbench"]
                                  for label in PGBENCH_CONFIGS}
                       for scenario in figures}
                for path, figures in (("server_functions", out["throughput"]),
                                      ("python_path", out["python_path"]["throughput"]))}
            out["vs_pgbench_tpcb_like"] = {
                label: out["throughput"]["transfers"][label]["ratio_to_pgbench_tpcb_like"]
                for label in PGBENCH_CONFIGS}
        if postgres and not args.quick:
            # What-ifs for the analysis of the Python path, transfers with 8 writer processes.
            # Not for production: they show what the per-operation overheads cost there.
            out["what_if_transfers_8_processes"] = {}
            for name, kwargs, variant in (
                    ("without_pool_pre_ping", {}, "no_pre_ping"),
                    ("without_pre_ping_and_readback", {}, "no_readback"),
                    ("synchronous_commit_off",
                     {"connect_args": {"options": "-c synchronous_commit=off"}},
                     "python_path")):
                log(f"postgresql what-if {name} ({args.duration}s)")
                result = measure(url, "transfers", name, 8, 1, args.duration, args.warmup,
                                 kwargs, variant, admin_url=admin_url)
                out["what_if_transfers_8_processes"][name] = {
                    k: result[k] for k in ("transfers_per_s", "latency", "cpu_share",
                                           "cpu_ms_per_transfer")}
        log(f"{backend} statements per operation")
        out["per_operation"] = count_statements(url)
        if postgres:
            out["per_operation_python_path"] = count_statements(url, server_functions=False)
        log(f"{backend} deduct latency with many live lots")
        out["deduct_latency_by_live_lots"] = deduct_with_live_lots(
            url, [1, 100, 1000] if not args.quick else [1, 100, 300], 100 if args.quick else 200)
        engine = ledger_database.make_engine(url)
        report = verify(engine)
        engine.dispose()
        out["verify_after_benchmark"] = {"ok": report.ok, "transfers": report.transfers,
                                         "seconds": round(report.seconds, 2)}
    log(f"{backend} verify over {args.verify_transfers} bulk-loaded transfers")
    out["verify"] = verify_big(make_db, builder, args.verify_transfers)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 s per measurement and 100,000 transfers for verify")
    parser.add_argument("--pg-url", default=os.environ.get("JUPYTERHUB_CREDITS_BENCH_PG_URL",
                                                           DEFAULT_PG_ADMIN_URL),
                        help="PostgreSQL admin URL (a temporary database is created there)")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--duration", type=float, help="seconds per measurement")
    parser.add_argument("--verify-transfers", type=int, help="size of the verify data set")
    parser.add_argument("--wait-for-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="on a shared machine, wait up to SECONDS before each measurement "
                             "for the machine to be nearly idle (default: do not wait)")
    parser.add_argument("--out", metavar="PATH", help="also write the JSON document to PATH")
    args = parser.parse_args(argv)
    global QUIET_WAIT
    QUIET_WAIT = args.wait_for_quiet
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.verify_transfers = args.verify_transfers or (100_000 if args.quick else 1_000_000)
    args.warmup = 5 if args.quick else 20

    began = time.perf_counter()
    result = {
        "benchmark": "jupyterhub_credits ledger",
        "parameters": {
            "quick": args.quick, "seconds_per_measurement": args.duration,
            "warmup_ops_per_writer": args.warmup, "accounts_per_writer": ACCOUNTS_PER_WRITER,
            "amount_units": AMOUNT, "verify_transfers": args.verify_transfers,
            "wait_for_quiet_s": args.wait_for_quiet,
            "configs": {label: {"processes": p, "threads_per_process": t}
                        for label, p, t in CONFIGS},
            "transfers_scenario": "grant and deduct alternate on each writer's own accounts; "
                                  "each call one transaction via Ledger",
            "hold_post_scenario": "hold then full post, per cycle; cycles_per_s counts pairs",
            "postgres_admin_url": None if args.skip_postgres else
            make_url(args.pg_url).render_as_string(hide_password=True),
            "postgres_write_path": "server functions (migration 0008), one autocommit call "
                                   "per transfer; python_path: the same loads with "
                                   "server_functions=False",
            "pgbench": {"arguments": PGBENCH_ARGS, "scale": PGBENCH_SCALE,
                        "clients": "as many as writer processes (1 and 8), -j up to the cores",
                        "when": "right before each 1_writer / 8_processes measurement, as long",
                        "why": "simple-update is pgbench's nearest to a transfer (update an "
                               "account, append a history row); tpcb-like also updates one "
                               "of `scale` branch rows, so at scale 1 all 8 clients queue on "
                               "one row; -M prepared because the ledger's writers send "
                               "prepared statements too",
                        "also": "for the transfers, pgbench's default tpcb-like script "
                                "(ratio_to_pgbench_tpcb_like)"},
        },
        "machine": machine(None if args.skip_postgres else args.pg_url),
        # The machine is shared (2 cores): figures are noisy; compare within one run.
        "load_average_before": _load(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="credits-bench-") as directory:
        if not args.skip_sqlite:
            counter = iter(range(1000))
            result["sqlite"] = run_backend(
                "sqlite", lambda: sqlite_database(directory, f"db{next(counter)}"),
                build_sqlite, args)
        if not args.skip_postgres:
            result["postgresql"] = run_backend(
                "postgresql", lambda: postgres_database(args.pg_url), build_postgres, args)
    result["load_average_after"] = _load(os.getloadavg())
    result["total_seconds"] = round(time.perf_counter() - began, 1)
    document = json.dumps(result, indent=2)
    print(document)
    if args.out:
        Path(args.out).write_text(document + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
