"""Many writers at once: threads and processes hammering the same few accounts.

Every worker runs a list of ledger operations (planned up front from a fixed
seed) and records what each answered: ``ok`` with the transfer id and the
duplicate flag, or the class of the error. Some operations are deliberately
sent twice: by two writers at about the same moment, and again later as a
retry. Afterwards the answers are checked against each other and against the
database:

* nothing failed except by a refusal the ledger documents (no deadlock, no
  "database is locked", no unhandled integrity or serialization error);
* each key that succeeded is exactly one transfer, every answer for that key
  carries its id, and exactly one of them says ``duplicate=False``; an attempt
  that began after that answer was given is answered as a duplicate, not refused;
* no transfer exists under a key nobody was told succeeded;
* each owner account's cached balance and reservation equal what the
  successful answers add up to, and ``verify`` finds nothing wrong.

Processes are started with the 'spawn' method and open their own ``Ledger``;
all workers wait on one barrier so they really start together. Every test runs on
each path that writes transfers (``ledger_path``, tests/test_ledger_paths.py) it is
meant for; ``options`` carries the path's ``Ledger.open`` options into every writer.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue as queue_module
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, select

from jupyterhub_credits.ledger import Ledger, LedgerError
from jupyterhub_credits.ledger.schema import accounts, transfers
from jupyterhub_credits.ledger.verify import verify
from test_ledger_paths import (  # noqa: F401 - fixtures
    POSTGRES_PATHS,
    db_url,
    ledger_options,
    ledger_path,
)

#: Refusals a correct ledger may answer under contention (funds ran out, a
#: hold was resolved by someone else first, a hold or transfer is not there yet
#: or was already reversed). Anything else is a failure of the test.
EXPECTED_REFUSALS = frozenset({
    "InsufficientFunds", "HoldNotPending", "UnknownTransfer", "NotReversible",
})
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=timezone.utc)
BARRIER_TIMEOUT = 120
RESULT_TIMEOUT = 120


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One call to the ledger; the same Op object is what a repeat sends again."""

    kind: str  # grant, deduct, hold, post, void, reverse
    key: str
    account: str | None = None
    amount: int | None = None
    target: str | None = None  # post/void: the hold's key; reverse: the transfer's key
    expires_at: datetime | None = None


def plan_hammer(seed: int, workers: int, steps: int, names: list[str], *,
                newcomer: str | None = None,
                repeat_kinds=("grant", "deduct", "hold", "post", "void", "reverse"),
                concurrent_repeats: float = 0.08, later_repeats: float = 0.08) -> list[list[Op]]:
    """Random operations for ``workers`` writers, ``steps`` each (plus the repeats).

    A repeat sends an earlier Op again under the same key: at the same step by
    another worker (the two race), or 1-15 steps later by any worker (a retry).
    ``newcomer``, an account that does not exist yet, gets a grant from every
    worker first (all race to create it) and then takes part like the others.
    """
    rng = random.Random(seed)
    plans: list[list[Op]] = [[] for _ in range(workers)]
    if newcomer is not None:
        for worker in range(workers):
            plans[worker].append(Op("grant", f"welcome-{worker}", newcomer, 10_000))
        names = [*names, newcomer]
    hold_keys: list[str] = []
    reversible: list[str] = []
    due: dict[int, list[Op]] = defaultdict(list)
    serial = 0
    for step in range(steps):
        for worker in range(workers):
            serial += 1
            name = rng.choice(names)
            roll = rng.random()
            if roll >= 0.64 and not hold_keys:
                roll = 0.5  # nothing to post, void or reverse yet: place a hold
            if roll < 0.22:
                expires = FAR_FUTURE.replace(year=2100 + rng.randrange(5)) \
                    if rng.random() < 0.4 else None
                op = Op("grant", f"g-{serial}", name, rng.randrange(2_000, 40_001),
                        expires_at=expires)
                reversible.append(op.key)
            elif roll < 0.42:
                op = Op("deduct", f"d-{serial}", name, rng.randrange(500, 15_001))
                reversible.append(op.key)
            elif roll < 0.64:
                op = Op("hold", f"h-{serial}", name, rng.randrange(500, 15_001))
                hold_keys.append(op.key)
            elif roll < 0.80:
                target = _recent(rng, hold_keys, workers)
                hold_amount = _hold_amount(plans, target)
                partial = rng.random() < 0.5 and hold_amount > 1
                op = Op("post", f"p-{serial}", amount=rng.randrange(1, hold_amount)
                        if partial else None, target=target)
                reversible.append(op.key)
            elif roll < 0.90:
                op = Op("void", f"v-{serial}", target=_recent(rng, hold_keys, workers))
            else:
                # Mostly grants, deducts and posts; now and then a hold (not reversible).
                pool = reversible if reversible and rng.random() < 0.9 else hold_keys
                op = Op("reverse", f"r-{serial}", target=_recent(rng, pool, workers))
            plans[worker].append(op)
            if op.kind in repeat_kinds:
                if rng.random() < concurrent_repeats and workers > 1:
                    other = rng.choice([w for w in range(workers) if w != worker])
                    plans[other].append(op)
                if rng.random() < later_repeats:
                    due[step + rng.randrange(1, 16)].append(op)
        for op in due.pop(step, []):
            plans[rng.randrange(workers)].append(op)
    return plans


def _recent(rng: random.Random, keys: list[str], workers: int) -> str:
    """A key planned a few steps ago: likely applied by now, still likely to race."""
    return rng.choice(keys[-4 * workers:-workers] or keys)


def _hold_amount(plans, key: str) -> int:
    for plan in plans:
        for op in plan:
            if op.key == key:
                return op.amount
    raise AssertionError(key)  # pragma: no cover


def split(plans: list[list[Op]], threads: int) -> tuple[list[list[Op]], list[list[Op]]]:
    """The first ``threads`` plans run on threads here, the rest in their own processes."""
    return plans[:threads], plans[threads:]


# --- running -------------------------------------------------------------------------------


def run_op(ledger: Ledger, op: Op) -> dict:
    """Apply ``op`` and describe the answer: ``ok`` with the transfer, or the error's class."""
    common = {"key": op.key, "actor": "test:hammer"}
    answer = {"key": op.key, "kind": op.kind, "account": op.account, "start": time.monotonic()}
    try:
        if op.kind == "grant":
            result = ledger.grant(op.account, op.amount, reason="hammer",
                                  expires_at=op.expires_at, **common)
        elif op.kind == "deduct":
            result = ledger.deduct(op.account, op.amount, reason="hammer", **common)
        elif op.kind == "hold":
            result = ledger.hold(op.account, op.amount, reason="hammer", **common)
        elif op.kind == "post":
            result = ledger.post(op.target, op.amount, **common)
        elif op.kind == "void":
            result = ledger.void(op.target, **common)
        elif op.kind == "reverse":
            result = ledger.reverse(op.target, reason="hammer", **common)
        else:  # pragma: no cover
            raise AssertionError(op.kind)
    except LedgerError as error:
        answer.update(ok=False, error=type(error).__name__, message=str(error))
    except Exception as error:  # noqa: BLE001 - recorded, and fails the test's checks
        answer.update(ok=False, error=f"{type(error).__module__}.{type(error).__name__}",
                      message=str(error)[:500])
    else:
        t = result.transfer
        answer.update(ok=True, duplicate=result.duplicate, id=t.id, transfer=(
            t.id, t.kind, t.debit_account, t.credit_account, t.amount, t.pending_id))
    answer["end"] = time.monotonic()
    return answer


def _run_plan(ledger: Ledger, plan: list[Op], barrier) -> list[dict]:
    barrier.wait(BARRIER_TIMEOUT)
    return [run_op(ledger, op) for op in plan]


def _process_main(url: str, plan: list[Op], barrier, results, options: dict) -> None:
    """Entry point of a spawned worker process: its own Ledger, its own connections."""
    try:
        ledger = Ledger.open(url, upgrade=False, **options)
    except BaseException as error:  # pragma: no cover - reported to the parent
        barrier.abort()
        results.put(("crashed", repr(error)))
        raise
    try:
        results.put(("done", _run_plan(ledger, plan, barrier)))
    except BaseException as error:  # pragma: no cover - reported to the parent
        results.put(("crashed", repr(error)))
        raise
    finally:
        ledger.close()


def run_writers(url: str, thread_plans: list[list[Op]], process_plans: list[list[Op]],
                options: dict) -> list[dict]:
    """Run every plan at once (threads here sharing one Ledger, plus spawned processes)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(thread_plans) + len(process_plans))
    results = ctx.Queue()
    processes = [ctx.Process(target=_process_main, args=(url, plan, barrier, results, options),
                             daemon=True)
                 for plan in process_plans]
    for process in processes:
        process.start()
    ledger = Ledger.open(url, upgrade=False, **options)
    thread_results: list = [None] * len(thread_plans)
    thread_errors: list = []

    def thread_main(index: int) -> None:
        try:
            thread_results[index] = _run_plan(ledger, thread_plans[index], barrier)
        except Exception as error:  # noqa: BLE001  # pragma: no cover - reported below
            thread_errors.append(repr(error))
            barrier.abort()

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(len(thread_plans))]
    try:
        for thread in threads:
            thread.start()
        process_results = []
        for _ in processes:
            try:
                process_results.append(results.get(timeout=RESULT_TIMEOUT))
            except queue_module.Empty:  # pragma: no cover
                pytest.fail("a writer process did not report back in time")
        for thread in threads:
            thread.join(RESULT_TIMEOUT)
            assert not thread.is_alive(), "a writer thread did not finish in time"
    finally:
        ledger.close()
        for process in processes:
            process.join(30)
            if process.is_alive():  # pragma: no cover
                process.kill()
    assert not thread_errors, thread_errors
    crashed = [detail for status, detail in process_results if status != "done"]
    assert not crashed, crashed
    outcomes = [o for plan in thread_results for o in plan]
    outcomes += [o for status, plan in process_results for o in plan]
    return outcomes


# --- checking ------------------------------------------------------------------------------


def check_outcomes(engine, outcomes: list[dict], newcomer: str | None = None
                   ) -> dict[str, tuple]:
    """Check every answer and the transfers table; return the applied transfer of each key."""
    unexpected = [o for o in outcomes if not o["ok"] and o["error"] not in EXPECTED_REFUSALS
                  # Spending from an account before its first grant has created it.
                  and not (o["error"] == "UnknownAccount" and o["account"] == newcomer)]
    assert not unexpected, f"{len(unexpected)} unexpected errors, e.g. {unexpected[:5]}"

    by_key: dict[str, list[dict]] = defaultdict(list)
    for outcome in outcomes:
        by_key[outcome["key"]].append(outcome)
    applied: dict[str, tuple] = {}
    for key, answers in by_key.items():
        oks = [a for a in answers if a["ok"]]
        if not oks:
            continue
        originals = [a for a in oks if not a["duplicate"]]
        assert len(originals) == 1, f"key {key!r}: {len(originals)} non-duplicate answers: {oks}"
        original = originals[0]
        ids = {a["id"] for a in oks}
        assert ids == {original["id"]}, f"key {key!r}: answers name transfers {ids}"
        # An attempt that began after the key's transfer was committed (its writer had its
        # answer) must be answered as a duplicate, never refused. Attempts that overlapped
        # or preceded it may have been refused legitimately (funds ran out, say).
        late_refusals = [a for a in answers if not a["ok"] and a["start"] > original["end"]]
        assert not late_refusals, f"key {key!r} applied, then refused: {late_refusals}"
        applied[key] = original["transfer"]

    with engine.connect() as conn:
        rows = conn.execute(select(transfers.c.key, transfers.c.id)
                            .where(transfers.c.key.is_not(None))).all()
    twice = [key for key, n in Counter(key for key, _ in rows).items() if n > 1]
    assert not twice, f"keys stored more than once: {twice[:10]}"
    stored = {key: transfer_id for key, transfer_id in rows}
    told = {key: fields[0] for key, fields in applied.items()}
    assert stored == told, (
        "the transfers table differs from what the writers were told: "
        f"missing {sorted(set(told) - set(stored))[:10]}, "
        f"never reported {sorted(set(stored) - set(told))[:10]}, "
        f"other ids {[k for k in told if k in stored and stored[k] != told[k]][:10]}")
    return applied


def model_balances(applied: dict[str, tuple]) -> dict[str, tuple[int, int]]:
    """(balance, reserved) per owner account, from the successful answers alone."""
    balance: Counter = Counter()
    held: dict[int, tuple[str, int]] = {}
    resolved: set[int] = set()
    for transfer_id, kind, debit, credit, amount, pending_id in applied.values():
        if kind == "hold":
            held[transfer_id] = (debit, amount)
        elif kind in ("post", "void"):
            resolved.add(pending_id)
        if kind not in ("hold", "void"):
            balance[credit] += amount
            balance[debit] -= amount
    reserved: Counter = Counter()
    for hold_id, (account, amount) in held.items():
        if hold_id not in resolved:
            reserved[account] += amount
    names = {n for n in [*balance, *reserved] if not n.startswith("system:")}
    return {name: (balance[name], reserved[name]) for name in names}


def check_ledger(url: str, outcomes: list[dict], newcomer: str | None = None
                 ) -> dict[str, tuple]:
    """All of the checks above, the cached balances against the model, then ``verify``."""
    ledger = Ledger.open(url, upgrade=False)
    try:
        applied = check_outcomes(ledger.engine, outcomes, newcomer)
        model = model_balances(applied)
        with ledger.engine.connect() as conn:
            cached = {name: (balance, reserved) for name, balance, reserved in conn.execute(
                select(accounts.c.name, accounts.c.balance, accounts.c.reserved)
                .where(accounts.c.kind != "system"))}
        assert cached == model
        for name, (total, reserved) in model.items():
            assert total >= reserved >= 0, name
            shown = ledger.balance(name)
            assert (shown.total, shown.reserved) == (total, reserved), name
        report = verify(ledger.engine)
        assert report.ok, report.to_dict()
        return applied
    finally:
        ledger.close()


def apply_serially(url: str, ops: list[Op], options: dict) -> list[dict]:
    ledger = Ledger.open(url, upgrade=False, **options)
    try:
        return [run_op(ledger, op) for op in ops]
    finally:
        ledger.close()


def tally(outcomes: list[dict]) -> Counter:
    """(kind, "ok" | "duplicate" | error class) -> count."""
    return Counter((o["kind"], ("duplicate" if o["duplicate"] else "ok") if o["ok"] else o["error"])
                   for o in outcomes)


# --- the tests -----------------------------------------------------------------------------

NAMES = ["alice", "bob", "group:lab", "carol"]
#: Both PostgreSQL paths (the fixture empties the run's shared database first).
postgres_only = pytest.mark.parametrize("ledger_path", POSTGRES_PATHS, indirect=True)


@postgres_only
def test_postgres_threads_and_processes_hammer_same_accounts(db_url, ledger_options):
    """8 threads and 4 processes: random operations on 4 accounts, repeated keys."""
    outcomes = apply_serially(db_url, [Op("grant", f"fund-{n}", n, 60_000) for n in NAMES],
                              ledger_options)
    plans = plan_hammer(seed=20261123, workers=12, steps=50, names=NAMES, newcomer="newcomer")
    outcomes += run_writers(db_url, *split(plans, threads=8), ledger_options)
    applied = check_ledger(db_url, outcomes, newcomer="newcomer")
    # The run exercised what it claims to: repeated keys answered as duplicates (several
    # racing), partial and full posts, voids, reversals, and refusals under contention.
    counts = tally(outcomes)
    assert sum(n for (_, status), n in counts.items() if status == "duplicate") >= 30, counts
    assert counts["post", "ok"] >= 10 and counts["void", "ok"] >= 5, counts
    assert counts["reverse", "ok"] >= 5 and counts["post", "HoldNotPending"] >= 1, counts
    assert counts["grant", "ok"] >= 12 + 100  # every welcome grant, the first creating it
    posts = [f for f in applied.values() if f[1] == "post"]
    assert len({f[5] for f in posts}) == len(posts)  # no hold posted twice


def test_sqlite_threads_and_processes_serialise_writers(tmp_path, caplog):
    """4 threads and 2 processes on one SQLite file: BEGIN IMMEDIATE queues the writers,
    nobody sees "database is locked", and the same invariants hold."""
    caplog.set_level(logging.DEBUG, logger="jupyterhub_credits.ledger.database")
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger.open(url).close()  # the schema, before the writers start
    outcomes = apply_serially(url, [Op("grant", f"fund-{n}", n, 60_000) for n in NAMES[:3]], {})
    plans = plan_hammer(seed=7, workers=6, steps=40, names=NAMES[:3], newcomer="newcomer")
    outcomes += run_writers(url, *split(plans, threads=4), {})
    check_ledger(url, outcomes, newcomer="newcomer")
    counts = tally(outcomes)
    assert sum(n for (_, status), n in counts.items() if status == "duplicate") >= 5, counts
    # Writers waited for the lock (busy timeout) rather than failing and being retried.
    assert not [r for r in caplog.records if "locked" in r.getMessage()]


SAME_KEY_WRITERS = 16


def _same_key_op(ledger: Ledger, kind: str) -> Op:
    """Set up what ``kind`` needs; the request every writer then sends under one key."""
    ledger.grant("dana", 50_000, key="prep-grant", reason="setup", actor="test")
    ledger.hold("dana", 7_000, key="prep-hold", actor="test")
    ledger.grant("dana", 3_000, key="prep-reversible", reason="setup", actor="test")
    return {
        "grant": Op("grant", "same-key", "dana", 1_234, expires_at=FAR_FUTURE),
        "deduct": Op("deduct", "same-key", "dana", 1_234),
        "hold": Op("hold", "same-key", "dana", 1_234),
        "post": Op("post", "same-key", amount=5_000, target="prep-hold"),
        "void": Op("void", "same-key", target="prep-hold"),
        "reverse": Op("reverse", "same-key", target="prep-reversible"),
    }[kind]


def _send_at_once(db_url: str, kind: str, options: dict) -> tuple[list[dict], list[int]]:
    ledger = Ledger.open(db_url, upgrade=False, **options)
    try:
        op = _same_key_op(ledger, kind)
        barrier = threading.Barrier(SAME_KEY_WRITERS)
        answers: list = [None] * SAME_KEY_WRITERS

        def writer(i: int) -> None:
            answers[i] = _run_plan(ledger, [op], barrier)[0]

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(SAME_KEY_WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(RESULT_TIMEOUT)
        assert all(answers), "a writer did not answer"
        with ledger.engine.connect() as conn:
            stored = conn.execute(select(transfers.c.id)
                                  .where(transfers.c.key == "same-key")).scalars().all()
        report = verify(ledger.engine)
        assert report.ok, report.to_dict()
        return answers, stored
    finally:
        ledger.close()


@pytest.mark.parametrize("kind", ["grant", "deduct", "hold", "post", "void", "reverse"])
def test_same_key_at_once_applies_once(db_url, ledger_options, kind):
    """16 writers send the very same request under one key at the same moment."""
    answers, stored = _send_at_once(db_url, kind, ledger_options)
    assert len(stored) == 1
    refused = [(a["error"], a["message"]) for a in answers if not a["ok"]]
    assert not refused, f"{len(refused)} of {len(answers)} refused, e.g. {refused[:3]}"
    assert {a["id"] for a in answers} == set(stored)
    assert sum(not a["duplicate"] for a in answers) == 1


@postgres_only
def test_same_key_reverse_committed_mid_request_is_a_duplicate(db_url, ledger_options):
    """A reversal under key K commits while another request with K is between its reads."""
    first = Ledger.open(db_url, upgrade=False, **ledger_options)
    second = Ledger.open(db_url, upgrade=False, **ledger_options)
    try:
        first.grant("ivy", 5_000, key="g", reason="setup", actor="test")
        done = []
        _commit_between_statements(second.engine, lambda: done.append(
            first.reverse("g", key="r", reason="oops", actor="test")))
        again = second.reverse("g", key="r", reason="oops", actor="test")
        assert done and again.duplicate and again.transfer.id == done[0].transfer.id
    finally:
        first.close()
        second.close()


def test_retried_reverse_is_a_duplicate(db_url, ledger_options):
    """A retry of a reversal that succeeded answers duplicate, not NotReversible."""
    ledger = Ledger.open(db_url, upgrade=False, **ledger_options)
    try:
        ledger.grant("erin", 5_000, key="g", reason="setup", actor="test")
        first = ledger.reverse("g", key="r", reason="oops", actor="test")
        again = ledger.reverse("g", key="r", reason="oops", actor="test")
        assert again.duplicate and again.transfer.id == first.transfer.id
    finally:
        ledger.close()


@postgres_only
def test_concurrent_spending_never_overdraws(db_url, ledger_options):
    """12 writers (8 threads, 4 processes) deduct and hold from one account with limited
    funds, in two lots whose boundary no request is aligned with: exactly the funds are
    spent, never more."""
    funds = 200_000
    outcomes = apply_serially(db_url, [
        Op("grant", "fund-1", "frank", 100_500, expires_at=FAR_FUTURE),
        Op("grant", "fund-2", "frank", 99_500),
    ], ledger_options)
    rng = random.Random(99)
    plans = [[Op(rng.choice(["deduct", "deduct", "hold"]), f"spend-{w}-{i}", "frank", 1_000)
              for i in range(20)] for w in range(12)]
    assert sum(op.amount for plan in plans for op in plan) > funds
    outcomes += run_writers(db_url, *split(plans, threads=8), ledger_options)
    applied = check_ledger(db_url, outcomes)
    spent = sum(f[4] for f in applied.values() if f[1] in ("deduct", "hold"))
    # Every request is 1,000 units and the funds a multiple of that: a refusal is only
    # right once nothing is left, so exactly the funds were spent.
    assert spent == funds
    assert {o["error"] for o in outcomes if not o["ok"]} == {"InsufficientFunds"}
    ledger = Ledger.open(db_url, upgrade=False)
    try:
        assert ledger.balance("frank").available == 0
    finally:
        ledger.close()


# --- readers while writers commit --------------------------------------------------------------

# Multi-statement reads must see one snapshot (REPEATABLE READ on PostgreSQL).
sqlite_and_postgres_snapshot = pytest.mark.parametrize("ledger_path", [
    "sqlite", pytest.param("postgres", marks=[pytest.mark.postgres]),
], indirect=True)


def _commit_between_statements(engine, write) -> None:
    """Run ``write`` (on another engine) once, right after ``engine``'s next SELECT: as if a
    concurrent writer committed while a read transaction was under way. Deterministic."""
    done = []

    def after(conn, cursor, statement, parameters, context, executemany):
        if not done and statement.lstrip().upper().startswith("SELECT"):
            done.append(True)
            write()

    event.listen(engine, "after_cursor_execute", after)


@sqlite_and_postgres_snapshot
def test_verify_reads_one_snapshot_while_writers_commit(db_url):
    """verify() on a live ledger: a grant committed mid-verify must not show up as a problem."""
    reader = Ledger.open(db_url, upgrade=False)
    writer = Ledger.open(db_url, upgrade=False)
    try:
        writer.grant("gina", 5_000, key="g1", reason="setup", actor="test")
        _commit_between_statements(reader.engine, lambda: writer.grant(
            "gina", 1_000, key="g2", reason="meanwhile", actor="test"))
        report = verify(reader.engine)
        assert report.ok, report.to_dict()
        assert verify(writer.engine).ok
    finally:
        reader.close()
        writer.close()


@sqlite_and_postgres_snapshot
def test_balance_reads_one_snapshot_while_sweep_expires(db_url, clock):
    """balance() subtracts lapsed, unswept credits; a sweep committing mid-read must not make
    the expired credits reappear."""
    reader = Ledger.open(db_url, upgrade=False, clock=clock)
    writer = Ledger.open(db_url, upgrade=False, clock=clock)
    try:
        writer.grant("hank", 5_000, key="keep", reason="setup", actor="test")
        writer.grant("hank", 3_000, key="lapse", reason="setup", actor="test",
                     expires_at=clock.now + timedelta(hours=1))
        clock.advance(hours=2)
        assert reader.balance("hank").total == 5_000
        _commit_between_statements(reader.engine, writer.sweep)
        assert reader.balance("hank").total == 5_000
        assert writer.balance("hank").total == 5_000
    finally:
        reader.close()
        writer.close()
