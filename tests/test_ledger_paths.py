"""Every path that writes a transfer, and proof that the two PostgreSQL paths write alike.

The ledger writes through one of three paths: SQLite (statements from Python),
PostgreSQL through its server functions (migration 0008; the default there) and
PostgreSQL through the Python path (``server_functions=False``). The ledger's test
modules run on all three by importing the fixtures below, which override the
two-backend ``db_url``/``ledger`` of conftest.py for that module only::

    from test_ledger_paths import db_url, ledger, ledger_options, ledger_path  # noqa: F401

The tests here replay one sequence of operations (every write, every refusal) on both
PostgreSQL paths and compare every answer, every error message and every row.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import FakeClock, migrated_sqlite_url
from sqlalchemy import text

from jupyterhub_credits.ledger import Ledger, LedgerError
from jupyterhub_credits.ledger import database as ledger_database
from jupyterhub_credits.ledger.schema import hold_lots, holds, lot_movements, lots, transfers
from jupyterhub_credits.sessions.schema import gpu_assignments, session_holds, sessions
from jupyterhub_credits.earning.schema import earning_users, events

postgres = pytest.mark.postgres
#: ``ledger_path`` values: where and how transfers are written.
POSTGRES_PATHS = [pytest.param("postgres", marks=postgres),
                  pytest.param("postgres-python", marks=postgres)]
LEDGER_PATHS = ["sqlite", *POSTGRES_PATHS]

# Children before parents; every table the shared test database may hold rows in.
_EMPTIED = (events, earning_users, gpu_assignments, session_holds, sessions, hold_lots,
            lot_movements, holds, lots, transfers)


def empty_postgres_ledger(engine) -> None:
    """What conftest's ``reset_ledger`` does, in one round trip and without TRUNCATE.

    TRUNCATE gives each table new files and costs ~0.7 s on this machine; a test's few
    rows DELETE in milliseconds. Sequences restart as with RESTART IDENTITY, and the
    accounts' continues right after the system accounts, so a replay gets the same ids.
    """
    statements = [f"DELETE FROM {table.name}" for table in _EMPTIED]
    statements.append("DELETE FROM credits_accounts WHERE kind <> 'system'")
    for table in _EMPTIED:
        if "id" in table.c and table.c.id.autoincrement is not False \
                and table.c.id.primary_key:
            statements.append(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                              "1, false)")
    statements.append("SELECT setval(pg_get_serial_sequence('credits_accounts', 'id'), "
                      "(SELECT max(id) FROM credits_accounts))")
    with engine.connect() as connection:
        connection.exec_driver_sql("; ".join(statements))
        connection.commit()


@pytest.fixture(params=LEDGER_PATHS)
def ledger_path(request) -> str:
    return request.param


def ledger_path_over(paths):
    """A ``ledger_path`` fixture over fewer paths, for a module to assign to that name.

    PostgreSQL's statement-by-statement path runs only where transfers are checked
    path by path (the stateful model, the replay above, concurrency): elsewhere it
    would repeat what SQLite's run of the same Python code shows, at the suite's cost.
    """
    @pytest.fixture(params=paths)
    def ledger_path(request) -> str:
        return request.param

    return ledger_path


#: SQLite and PostgreSQL as deployed (its server functions).
DEPLOYED_PATHS = ["sqlite", pytest.param("postgres", marks=postgres)]


@pytest.fixture
def ledger_options(ledger_path) -> dict:
    """``Ledger.open`` options for the path: PostgreSQL's functions forced on or off."""
    if ledger_path == "sqlite":
        return {}
    return {"server_functions": ledger_path == "postgres"}


@pytest.fixture
def db_url(ledger_path, request, tmp_path) -> str:
    """A ledger database URL, empty and at the schema's head, for the path."""
    if ledger_path == "sqlite":
        return migrated_sqlite_url(tmp_path)
    url = request.getfixturevalue("postgres_url")
    engine = ledger_database.make_engine(url)
    empty_postgres_ledger(engine)
    engine.dispose()
    return url


@pytest.fixture
def ledger(db_url, clock, ledger_options):
    ledger = Ledger.open(db_url, clock=clock, **ledger_options)
    assert ledger.uses_server_functions == bool(ledger_options.get("server_functions"))
    yield ledger
    ledger.close()


# --- the two PostgreSQL paths write the same rows ------------------------------------------


def _operations(ledger: Ledger, clock: FakeClock) -> list:
    """One call of every write, and every refusal the writes can give; their answers."""
    later = clock.now + timedelta(hours=1)
    answers = []

    def do(name, call):
        try:
            result = call()
        except LedgerError as error:
            answers.append((name, type(error).__name__, str(error)))
        else:
            answers.append((name, result.duplicate, result.transfer))

    do("grant new", lambda: ledger.grant("alice", 5_000, key="g1", reason="r", actor="admin",
                                         metadata={"note": "first", "n": [1, 2]}))
    do("grant expiring", lambda: ledger.grant("alice", 3_000, key="g2", reason="r", actor="a",
                                              expires_at=later))
    do("earn", lambda: ledger.earn("user:alice", 700, key="e1", rule="login"))
    do("earn group", lambda: ledger.earn("group:lab", 2_000, key="e2", rule="publish",
                                         expires_at=later + timedelta(hours=1)))
    do("grant again", lambda: ledger.grant("alice", 5_000, key="g1", reason="r", actor="admin",
                                           metadata={"note": "first", "n": [1, 2]}))
    do("grant conflict", lambda: ledger.grant("alice", 5_001, key="g1", reason="r",
                                              actor="admin"))
    do("deduct across lots", lambda: ledger.deduct("alice", 4_000, key="d1", reason="r",
                                                   actor="admin", metadata={}))
    do("deduct too much", lambda: ledger.deduct("alice", 999_999, key="d2", reason="r",
                                                actor="a"))
    do("deduct unknown", lambda: ledger.deduct("nobody", 1, key="d3", reason="r", actor="a"))
    do("deduct again", lambda: ledger.deduct("alice", 4_000, key="d1", reason="r",
                                             actor="admin", metadata={}))
    do("hold", lambda: ledger.hold("alice", 3_000, key="h1", actor="s", reason="session",
                                   timeout=timedelta(minutes=30)))
    do("hold group", lambda: ledger.hold("group:lab", 1_500, key="h2", actor="s"))
    do("hold small", lambda: ledger.hold("alice", 100, key="h3", actor="s"))
    do("hold timing out", lambda: ledger.hold("alice", 200, key="h4", actor="s",
                                              timeout=timedelta(minutes=5)))
    do("hold too much", lambda: ledger.hold("alice", 999_999, key="h5", actor="s"))
    do("hold unknown", lambda: ledger.hold("nobody", 1, key="h6", actor="s"))
    do("hold again", lambda: ledger.hold("alice", 3_000, key="h1", actor="s", reason="session",
                                         timeout=timedelta(minutes=30)))
    clock.advance(minutes=1)
    do("post partial", lambda: ledger.post("h1", 1_234, key="p1", actor="meter", reason="used",
                                           metadata={"session": "s1"}))
    do("post whole", lambda: ledger.post("h2", key="p2", actor="meter"))
    do("post again", lambda: ledger.post("h1", 1_234, key="p1", actor="meter", reason="used",
                                         metadata={"session": "s1"}))
    do("post resolved", lambda: ledger.post("h1", key="p3", actor="meter"))
    do("post unknown", lambda: ledger.post("no-such-hold", key="p4", actor="meter"))
    do("post not a hold", lambda: ledger.post("g1", key="p5", actor="meter"))
    do("post over", lambda: ledger.post("h3", 101, key="p6", actor="meter"))
    do("post bad hold key", lambda: ledger.post("", key="p7", actor="meter"))
    do("void", lambda: ledger.void("h3", key="v1", actor="meter", reason="stopped"))
    do("void again", lambda: ledger.void("h3", key="v1", actor="meter", reason="stopped"))
    do("void resolved", lambda: ledger.void("h2", key="v2", actor="meter"))
    do("void unknown", lambda: ledger.void("no-such-hold", key="v3", actor="meter"))
    do("void not a hold", lambda: ledger.void("d1", key="v4", actor="meter"))
    do("void conflict", lambda: ledger.void("h4", key="p2", actor="meter"))
    # The sweep's void when the hold's timeout has moved past the sweep's moment.
    do("sweep void too early", lambda: ledger._void(
        "h4", key="timeout:hold-early", actor="system:sweep", reason="hold timed out",
        metadata=None, fingerprint=None, system=True, timed_out_by=clock.now))
    clock.advance(hours=3)
    sweep = ledger.sweep()
    answers.append(("sweep", sweep.holds_voided, sweep.lots_expired, sweep.expired_units))
    do("reverse earn", lambda: ledger.reverse("e1", key="r1", reason="oops", actor="admin"))
    do("grant after", lambda: ledger.grant("bob", 1_000, key="g3", reason="r", actor=""))
    return answers


def _rows(engine) -> dict:
    """Every row of every ledger table, in id order."""
    out = {}
    with engine.connect() as connection:
        for table in ("credits_accounts", "credits_transfers", "credits_lots", "credits_holds",
                      "credits_hold_lots", "credits_lot_movements"):
            order = "hold_id, lot_id" if table == "credits_hold_lots" else \
                "transfer_id" if table == "credits_holds" else "id"
            # metadata as stored text: the very JSON each path wrote.
            columns = "*, metadata::text AS metadata_text" if table == "credits_transfers" \
                else "*"
            out[table] = [tuple(row) for row in connection.execute(
                text(f"SELECT {columns} FROM {table} ORDER BY {order}"))]
    return out


@postgres
def test_function_and_python_paths_write_identical_rows(postgres_url):
    seen = {}
    for functions in (False, True):
        engine = ledger_database.make_engine(postgres_url)
        empty_postgres_ledger(engine)
        engine.dispose()
        clock = FakeClock()
        ledger = Ledger.open(postgres_url, clock=clock, server_functions=functions)
        try:
            assert ledger.uses_server_functions is functions
            seen[functions] = (_operations(ledger, clock), _rows(ledger.engine))
        finally:
            ledger.close()
    python_answers, python_rows = seen[False]
    function_answers, function_rows = seen[True]
    assert function_answers == python_answers
    assert function_rows == python_rows
    # The sequence did what it says: every refusal kind, both kinds of void, an expiry.
    refusals = {answer[1] for answer in python_answers if isinstance(answer[1], str)}
    assert refusals == {"IdempotencyConflict", "InsufficientFunds", "UnknownAccount",
                        "HoldNotPending", "UnknownTransfer", "InvalidRequest"}
    kinds = [row[2] for row in python_rows["credits_transfers"]]
    assert {"grant", "earn", "deduct", "hold", "post", "void", "expire", "reverse"} <= set(kinds)
    assert any(row[1] is None and row[2] == "void" for row in python_rows["credits_transfers"])
    timing_out = next(answer[2] for answer in python_answers if answer[0] == "hold timing out")
    sweep = next(answer for answer in python_answers if answer[0] == "sweep")
    assert sweep[1] == [timing_out.id] and sweep[3] > 0  # h4 timed out; lots expired

