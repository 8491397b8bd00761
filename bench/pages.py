#!/usr/bin/env python
"""Pages benchmark: the read models behind My credits and the admin panel at scale.

    .venv/bin/python bench/pages.py [--runs 60] [--users 100000] [--transfers 1000000]
        [--heavy 10000] [--pg-url ADMIN_URL] [--out bench/results/pages.json]

Seeds a throwaway PostgreSQL database (created and dropped through the admin URL)
with COPY, not through the ledger: ``--users`` user accounts with about
``--transfers`` transfers between them, spread over a year and in the order of their
ids, plus one user (``user:heavy``) with ``--heavy`` transfers and thousands of lots.
Accounts' balances and lifetime totals, and the lots' remainders, are set to what
the transfers say (holds and lot movements are left out: the pages never read them,
so ``verify()`` would not pass on this data). Also ended and open GPU sessions.

Then times each read ``--runs`` times (after a few warm-up runs) and reports p50/p99:
``reports.history_page`` (an account's first page, a deep page, a kind filter; the
audit log, and one rare kind of it), ``lots_of``, ``accounts_page`` for each sort
and order (and a search, a deep page), ``daily_flows``, ``top_consumers``,
``gpu_hours_by_day``; and the page builders where they exist:
``build_my_credits(context, user)`` and ``build_admin_users(context, sort=...)``.
It records the PostgreSQL plans of the main queries. One JSON document on stdout
(progress on stderr), also written to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import platform
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from benchdb import (  # noqa: E402
    DEFAULT_PG_ADMIN_URL,
    log,
    percentiles,
    postgres_database,
    wait_for_quiet,
)
from jupyterhub_credits.ledger import Ledger, reports
from jupyterhub_credits.ledger import database as ledger_database
from jupyterhub_credits.sessions import usage

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
YEAR = timedelta(days=365)
#: Each ordinary user's transfers over the year, in this order, each user starting at another
#: place in it (so that every day sees every kind).
PATTERN = ("grant", "earn", "hold", "post", "earn", "hold", "post", "deduct", "earn", "hold",
           "void")
#: The heavy user's: sessions and earnings (earns expire after 90 days), a grant now and then.
HEAVY_PATTERN = ("earn", "hold", "post", "earn", "hold", "void", "earn", "hold", "post")
HEAVY_GRANT_EVERY = 500
GPU_TYPES = ("a100", "h100", "t4")
ISSUANCE_ID, USAGE_ID, EXPIRED_ID = 1, 2, 3


def _copy_value(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


class Seeder:
    """Rows for COPY, consistent enough for the pages (see the module docstring)."""

    def __init__(self, users: int, transfers: int, heavy: int, seed: int = 8):
        self.random = random.Random(seed)
        self.users = users
        self.rounds = max(1, round((transfers - heavy) / users))
        self.heavy = heavy
        self.rows = {"credits_accounts": [], "credits_transfers": [], "credits_lots": [],
                     "credits_sessions": []}
        self.transfer_id = 0
        self.lot_id = 0

    def build(self) -> dict:
        first_user = 4  # after the three system accounts
        ids = list(range(first_user, first_user + self.users))
        heavy_id = first_user + self.users
        state = {account: {"balance": 0, "earned": 0, "spent": 0, "lots": [], "hold": None}
                 for account in [*ids, heavy_id]}
        total = self.rounds * self.users + self.heavy
        # Interleave: per round every user once, the heavy user's transfers spread evenly.
        heavy_every = max(1, (self.rounds * self.users) // max(1, self.heavy))
        heavy_done = 0
        n = 0
        def heavy_kind(i):
            return "grant" if i % HEAVY_GRANT_EVERY == 0 else HEAVY_PATTERN[i % len(HEAVY_PATTERN)]

        for round_ in range(self.rounds):
            for account in ids:
                self.transfer(state, account, PATTERN[(round_ + account) % len(PATTERN)],
                              n / total)
                n += 1
                if n % heavy_every == 0 and heavy_done < self.heavy:
                    self.transfer(state, heavy_id, heavy_kind(heavy_done), n / total)
                    heavy_done += 1
                    n += 1
        while heavy_done < self.heavy:
            self.transfer(state, heavy_id, heavy_kind(heavy_done), 1.0)
            heavy_done += 1
        # What the sweep would have done: lapsed lots expired (the log's rare kind).
        for account, figures in state.items():
            for lot in figures["lots"]:
                if lot[6] is not None and lot[6] <= NOW and lot[4] > 0:
                    self.expire(figures, account, lot)
        for account, figures in state.items():
            name = "user:heavy" if account == heavy_id else f"user:u{account - first_user:06d}"
            self.rows["credits_accounts"].append(
                (account, name, "user", figures["balance"], 0, NOW - YEAR, figures["earned"],
                 figures["spent"]))
            for lot in figures["lots"]:
                self.rows["credits_lots"].append(tuple(lot))
        self.sessions(ids, heavy_id)
        return self.rows

    def transfer(self, state, account: int, kind: str, when: float) -> None:
        figures = state[account]
        created = NOW - YEAR + YEAR * min(when, 1.0) - timedelta(seconds=1)
        amount = self.random.randint(100, 5_000)
        debit, credit, pending = account, USAGE_ID, None
        if kind in ("grant", "earn"):
            debit, credit = ISSUANCE_ID, account
            amount = 100_000 if kind == "grant" else amount
        elif kind == "deduct":
            credit = ISSUANCE_ID
        elif kind in ("post", "void"):
            pending = figures["hold"]  # the account's last hold
        if kind in ("post", "deduct"):
            amount = min(amount, figures["balance"]) or 0
            if amount == 0:
                kind, debit, credit, amount = "earn", ISSUANCE_ID, account, 1_000
        self.transfer_id += 1
        tid = self.transfer_id
        reason = {"grant": "course allocation", "earn": "login", "deduct": "correction"}.get(
            kind, "session")
        self.rows["credits_transfers"].append(
            (tid, f"seed-{tid}", kind, debit, credit, amount, created, "bench", reason,
             None, None, pending, None))
        if kind == "hold":
            figures["hold"] = tid
        if kind in ("grant", "earn"):
            self.lot_id += 1
            expires = None if kind == "grant" else created + timedelta(days=90)
            figures["lots"].append([self.lot_id, account, tid, amount, amount, 0, expires])
            figures["balance"] += amount
            figures["earned"] += amount if kind == "earn" else 0
        elif kind in ("post", "deduct"):
            left = amount
            # Soonest-expiring first, as the ledger draws.
            for lot in sorted(figures["lots"], key=lambda lot: (lot[6] is None, lot[6] or NOW,
                                                               lot[0])):
                take = min(left, lot[4])
                lot[4] -= take
                left -= take
                if not left:
                    break
            figures["balance"] -= amount
            figures["spent"] += amount if kind == "post" else 0

    def expire(self, figures, account: int, lot: list) -> None:
        self.transfer_id += 1
        self.rows["credits_transfers"].append(
            (self.transfer_id, f"expire:lot-{lot[0]}:{lot[4]}", "expire", account, EXPIRED_ID,
             lot[4], lot[6], "system:sweep", "credits expired", None, None, None, None))
        figures["balance"] -= lot[4]
        lot[4] = 0

    def sessions(self, ids: list[int], heavy_id: int) -> None:
        """One ended GPU session per user (spread over the year), 500 open ones, 20 of heavy's."""
        sid = 0

        def add(user, *, ready, end, state, server=""):
            nonlocal sid
            sid += 1
            gpus = self.random.choice((1, 1, 2, 4))
            self.rows["credits_sessions"].append((
                sid, f"sess-{sid}", user, server, f"user:{user}", "tensorflow-2.21",
                GPU_TYPES[sid % len(GPU_TYPES)], gpus, 2_000 * gpus, 2_000 * gpus, state,
                ready - timedelta(minutes=2), ready, end,  # requested, ready, paid until
                NOW if state != "ended" else end, end if state == "ended" else None,
                "expired" if state == "ended" else None, 1_000 if state == "ended" else None,
                False, None, None))

        for i, account in enumerate(ids):
            ready = NOW - YEAR + YEAR * (i / len(ids))
            add(f"u{account - 4:06d}", ready=ready, end=ready + timedelta(hours=2), state="ended")
        for i in range(500):
            ready = NOW - timedelta(minutes=30 + i)
            add(f"u{i:06d}", ready=ready, end=NOW + timedelta(minutes=30), state="running",
                server="gpu")
        for i in range(20):
            ready = NOW - timedelta(days=i, hours=3)
            add("heavy", ready=ready, end=ready + timedelta(hours=1), state="ended",
                server=f"s{i}")
        add("heavy", ready=NOW - timedelta(minutes=40), end=NOW + timedelta(minutes=20),
            state="running")


COLUMNS = {
    "credits_accounts": ("id", "name", "kind", "balance", "reserved", "created_at",
                         "lifetime_earned", "lifetime_spent"),
    "credits_transfers": ("id", "key", "kind", "debit_account_id", "credit_account_id", "amount",
                          "created_at", "actor", "reason", "metadata", "request_hash",
                          "pending_id", "reversal_of"),
    "credits_lots": ("id", "account_id", "transfer_id", "amount", "remaining", "reserved",
                     "expires_at"),
    "credits_sessions": ("id", "key", "user", "server_name", "account", "image", "gpu_type",
                         "gpus", "rate_per_hour", "held", "state", "requested_at", "ready_at",
                         "paid_until", "billed_until", "ended_at", "end_reason", "charged",
                         "auto_extend", "warnings", "devices"),
}


def seed(url: str, users: int, transfers: int, heavy: int) -> dict:
    import psycopg

    started = time.perf_counter()
    rows = Seeder(users, transfers, heavy).build()
    built = time.perf_counter() - started
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        # Consistent by construction: skip the per-row foreign-key triggers.
        conn.execute("SET session_replication_role = replica")
        for table, columns in COLUMNS.items():
            quoted = ', '.join(f'"{column}"' for column in columns)
            with conn.cursor().copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                buffer = io.StringIO()
                for n, row in enumerate(rows[table], 1):
                    buffer.write("\t".join(map(_copy_value, row)) + "\n")
                    if n % 50_000 == 0:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
        for table in ("credits_accounts", "credits_transfers", "credits_lots", "credits_sessions"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT MAX(id) FROM {table}))")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    counts = {table: len(table_rows) for table, table_rows in rows.items()}
    return {"rows": counts, "build_s": round(built, 1),
            "load_s": round(time.perf_counter() - started - built, 1)}


#: --wait-quiet: seconds to wait, before each measurement, for the machine to be nearly idle.
QUIET_WAIT = 0.0


def timed(function, runs: int, warmup: int = 3) -> dict:
    busy = wait_for_quiet(QUIET_WAIT)
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    result = percentiles(samples)
    if busy is not None:
        result["machine_busy_before"] = busy
    return result


def plans(engine) -> dict:
    """EXPLAIN (ANALYZE) of the statements the account list and a history page run."""
    from sqlalchemy import event

    statements = {}
    captured = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    ledger = Ledger(engine, clock=lambda: NOW)
    try:
        for label, call in (
                ("accounts_balance_desc", lambda: reports.accounts_page(ledger)),
                ("accounts_spent_asc", lambda: reports.accounts_page(ledger, sort="spent",
                                                                     order="asc")),
                ("accounts_search", lambda: reports.accounts_page(ledger, search="u01234")),
                ("history_heavy", lambda: reports.history_page(ledger, "user:heavy")),
                ("history_heavy_sessions", lambda: reports.history_page(
                    ledger, "user:heavy", kind="sessions")),
                ("audit_expiry", lambda: reports.history_page(ledger, None, kind="expiry")),
                ("daily_flows", lambda: reports.daily_flows(ledger, days=30, now=NOW))):
            captured.clear()
            call()
            found = [(s, p) for s, p in captured if s.lstrip().startswith("SELECT")]
            with engine.connect() as conn:
                explained = []
                for statement, parameters in found:
                    cursor = conn.connection.cursor()
                    cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement, parameters)
                    explained.append([row[0] for row in cursor.fetchall()])
                    cursor.close()
            statements[label] = explained
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return statements


def builders():
    """The page builders that exist now: {name: function}."""
    found = {}
    for module, name in (("jupyterhub_credits.service.pages.my_credits", "build_my_credits"),
                         ("jupyterhub_credits.service.pages.admin_users", "build_admin_users")):
        try:
            found[name] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            log(f"{module}.{name} not available: {error}")
    return found


def service_context(ledger: Ledger):
    """A service context as ``CreditsService.make_context`` builds it, without hub or meter."""
    from jupyterhub_credits.catalog import load_catalog
    from jupyterhub_credits.earning import EarningService
    from jupyterhub_credits.service.context import ServiceContext
    from jupyterhub_credits.sessions.store import SessionStore

    catalog = load_catalog(ROOT / "config" / "catalog.yaml")
    return ServiceContext(ledger=ledger, sessions=SessionStore(ledger), catalog=catalog,
                          hub=None, clock=lambda: NOW, earning=EarningService(ledger))


def template_renderer():
    """``render(template, **values)`` with the namespace ``PageHandler.template_namespace``
    gives a logged-in page (fixed URLs, no request), or None where the pages are missing."""
    try:
        from jupyterhub_credits.service.pages.base import PageUser, template_environment
    except ImportError as error:
        log(f"templates not available: {error}")
        return None
    environment = template_environment()
    namespace = {
        "base_url": "/hub/", "prefix": "/services/credits/", "user": PageUser("bench"),
        "login_url": "/hub/login", "logout_url": "/hub/logout",
        "static_url": lambda path, include_version=True: "/hub/static/" + path,
        "version_hash": "", "services": [{"name": "credits", "href": "/services/credits/"}],
        "parsed_scopes": set(), "admin_access": False, "no_spawner_check": True,
        "announcement": None, "xsrf_token": "x", "credits_prefix": "/services/credits/",
        "credits_static_url": lambda path, include_version=True: "/services/credits/static/"
                                                                  + path,
        "api_url": "/services/credits/api/", "form_key": lambda: "0" * 32,
    }

    def render(template: str, **values) -> str:
        return environment.get_template(template).render(**{**namespace, **values})

    return render


def measure(url: str, runs: int) -> dict:
    ledger = Ledger.open(url, clock=lambda: NOW, upgrade=False, pool_size=2)
    engine = ledger.engine
    result: dict = {}
    with engine.connect() as conn:
        heavy_last = conn.execute(text(
            "SELECT max(t.id) FROM credits_transfers t JOIN credits_accounts a "
            "ON a.id IN (t.debit_account_id, t.credit_account_id) WHERE a.name = 'user:heavy'")
        ).scalar()
        total_transfers = conn.execute(text("SELECT count(*) FROM credits_transfers")).scalar()
    middle = total_transfers // 2
    cases = {
        "history_page.heavy_first": lambda: reports.history_page(ledger, "user:heavy"),
        "history_page.heavy_deep": lambda: reports.history_page(ledger, "user:heavy",
                                                                before=middle),
        "history_page.heavy_sessions": lambda: reports.history_page(ledger, "user:heavy",
                                                                    kind="sessions"),
        "history_page.heavy_reversals_none": lambda: reports.history_page(
            ledger, "user:heavy", kind="reversals"),
        "history_page.ordinary_first": lambda: reports.history_page(ledger, "user:u050000"),
        "history_page.audit_first": lambda: reports.history_page(ledger, None),
        "history_page.audit_deep": lambda: reports.history_page(ledger, None, before=middle),
        "history_page.audit_grants": lambda: reports.history_page(ledger, None, kind="grants"),
        "history_page.audit_expiry_none": lambda: reports.history_page(ledger, None,
                                                                       kind="expiry"),
        "lots_of.heavy": lambda: reports.lots_of(ledger, "user:heavy"),
        "lots_of.ordinary": lambda: reports.lots_of(ledger, "user:u050000"),
        "accounts_page.search": lambda: reports.accounts_page(ledger, search="u0123"),
        "accounts_page.search_none": lambda: reports.accounts_page(ledger, search="nobody"),
        "accounts_page.search_all": lambda: reports.accounts_page(ledger, search="u"),
        "accounts_page.balance_page_100": lambda: reports.accounts_page(ledger, offset=4950),
        "account_summary": lambda: reports.account_summary(ledger, "user:heavy"),
        "daily_flows.30": lambda: reports.daily_flows(ledger, days=30, now=NOW),
        "daily_flows.365": lambda: reports.daily_flows(ledger, days=365, now=NOW),
        "top_consumers.30": lambda: reports.top_consumers(ledger, days=30, now=NOW),
        "gpu_hours_by_day.30": lambda: usage.gpu_hours_by_day(engine, days=30, now=NOW),
        "latest_gpu_utilization.500": lambda: usage.latest_gpu_utilization(
            engine, [f"sess-{n}" for n in range(100_001, 100_501)], NOW),
    }
    for sort in reports.ACCOUNT_SORTS:
        for order in reports.ORDERS:
            cases[f"accounts_page.{sort}_{order}"] = (
                lambda sort=sort, order=order: reports.accounts_page(ledger, sort=sort,
                                                                     order=order))
    for label, call in cases.items():
        result[label] = timed(call, runs)
        log(f"{label}: {result[label]}")
    found = builders()
    render = template_renderer()
    if found:
        context = service_context(ledger)
        if "build_my_credits" in found:
            for user in ("heavy", "u050000"):
                label = f"build_my_credits.{user}"
                try:
                    result[label] = timed(
                        lambda user=user: found["build_my_credits"](context, user), runs)
                except Exception as error:  # noqa: BLE001 - report, do not stop the run
                    result[label] = {"error": repr(error)}
                log(f"{label}: {result[label]}")
        if "build_admin_users" in found:
            for sort in ("balance", "spent", "earned", "name"):
                for order in ("desc", "asc"):
                    label = f"build_admin_users.{sort}_{order}"
                    try:
                        result[label] = timed(lambda sort=sort, order=order: found[
                            "build_admin_users"](context, sort=sort, order=order), runs)
                    except Exception as error:  # noqa: BLE001
                        result[label] = {"error": repr(error)}
                    log(f"{label}: {result[label]}")
        if render is not None:
            from jupyterhub_credits.service.pages import admin, my_credits

            pages_ = []
            if "build_my_credits" in found:
                pages_.append(("render.my_credits.heavy", "my_credits.html",
                               lambda: found["build_my_credits"](context, "heavy"),
                               {"kinds": my_credits.KIND_FILTERS, "can_spend": True}))
            if "build_admin_users" in found:
                # As ``AdminHandler._users`` hands it to the template.
                pages_.append(("render.admin_users.balance_desc", "admin_users.html",
                               lambda: {"page_data": found["build_admin_users"](context),
                                        "sorts": getattr(admin, "SORTS", {})},
                               {"tabs": admin.TABS, "tab": "users", "admin": "bench"}))
            for label, template, build, extra in pages_:
                try:
                    data = build()
                    html = render(template, **extra, **data)
                    result[label] = timed(lambda: render(template, **extra, **data), runs)
                    result[label]["html_bytes"] = len(html.encode())
                    label_both = label.replace("render.", "build_and_render.")
                    result[label_both] = timed(lambda: render(template, **extra, **build()),
                                               runs)
                except Exception as error:  # noqa: BLE001 - report, do not stop the run
                    result[label] = {"error": repr(error)}
                log(f"{label}: {result[label]}")
    result["_heavy_last_transfer"] = heavy_last
    ledger.close()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--heavy", type=int, default=10_000)
    parser.add_argument("--pg-url", default=os.environ.get("JUPYTERHUB_CREDITS_TEST_PG_URL",
                                                           DEFAULT_PG_ADMIN_URL))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pages.json"))
    parser.add_argument("--no-plans", action="store_true")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before each measurement wait up to S seconds for a quiet machine")
    args = parser.parse_args(argv)
    global QUIET_WAIT
    QUIET_WAIT = args.wait_quiet
    report = {"benchmark": "pages", "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(), "backend": "postgresql",
              "runs": args.runs, "now": NOW.isoformat(),
              "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with postgres_database(args.pg_url) as url:
        log(f"seeding {args.users} users, ~{args.transfers} transfers, heavy {args.heavy}")
        report["seed"] = seed(url, args.users, args.transfers, args.heavy)
        log(f"seeded: {report['seed']}")
        with ledger_database.make_engine(url).connect() as conn:
            report["server"] = conn.execute(text("SHOW server_version")).scalar()
        report["timings_ms"] = measure(url, args.runs)
        if not args.no_plans:
            engine = ledger_database.make_engine(url)
            report["plans"] = plans(engine)
            engine.dispose()
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text_out = json.dumps(report, indent=2, default=str)
    print(text_out)
    if args.out:
        Path(args.out).write_text(text_out + "\n")
        log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
