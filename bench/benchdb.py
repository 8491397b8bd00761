"""What the benchmark scripts share: temporary databases, logging, latency figures,
machine load and PostgreSQL wait sampling."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, text

from jupyterhub_credits.ledger import database as ledger_database

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON result."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def sqlite_database(directory: str, name: str):
    """A new SQLite ledger file at the schema's head."""
    url = f"sqlite:///{Path(directory) / (name + '.sqlite')}"
    engine = ledger_database.make_engine(url)
    ledger_database.upgrade(engine)
    engine.dispose()
    yield url


@contextlib.contextmanager
def postgres_database(admin_url: str = DEFAULT_PG_ADMIN_URL):
    """A new PostgreSQL database at the schema's head, dropped afterwards."""
    admin = create_engine(ledger_database.normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"credits_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        engine = ledger_database.make_engine(url)
        ledger_database.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def percentiles(samples: list[float]) -> dict:
    """Latency figures in milliseconds from durations in seconds."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"count": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 2),
            "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": round(1000 * ordered[-1], 2)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / ticks, total / ticks


def wait_for_quiet(max_wait: float, busy_below: float = 0.15) -> float | None:
    """On a shared machine: wait (up to ``max_wait`` s) until it is nearly idle; the busy
    share of the last second looked at (None when not asked to wait)."""
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    while True:
        busy0, total0 = machine_cpu()
        time.sleep(1.0)  # the sampling window, not synchronisation
        busy1, total1 = machine_cpu()
        share = (busy1 - busy0) / max(1e-9, total1 - total0)
        if share < busy_below or time.monotonic() > deadline:
            return round(share, 3)


class WaitSampler(threading.Thread):
    """What our database's client backends are doing, on average (pg_stat_activity)."""

    def __init__(self, admin_url: str, database: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.engine = create_engine(ledger_database.normalize_url(admin_url),
                                    isolation_level="AUTOCOMMIT")
        self.database, self.interval = database, interval
        self.stop = threading.Event()
        self.samples = 0
        self.counts: Counter = Counter()

    def run(self):
        query = text("SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                     "WHERE datname = :db AND pid <> pg_backend_pid() AND backend_type = "
                     "'client backend'")
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                for state, kind, name in conn.execute(query, {"db": self.database}):
                    label = state if not kind else f"{state}: {kind}/{name}"
                    self.counts[label] += 1
                self.samples += 1
                self.stop.wait(self.interval)
        self.engine.dispose()

    def result(self) -> dict:
        self.stop.set()
        self.join()
        return {label: round(n / max(1, self.samples), 2)
                for label, n in self.counts.most_common(8)}
