"""verify(): a consistent ledger passes; each kind of corruption, made with raw SQL, is named."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from conftest import reset_ledger
from sqlalchemy import text

from jupyterhub_credits.ledger.verify import verify
from test_ledger_paths import DEPLOYED_PATHS, ledger_path_over
from test_ledger_paths import db_url, ledger, ledger_options  # noqa: F401

ledger_path = ledger_path_over(DEPLOYED_PATHS)

CHECKS = {"balances_sum_to_zero", "cached_balances", "no_overdraft", "reserved_matches_holds",
          "holds_resolved_once", "keys_applied_once", "reversals_once", "lots"}


@pytest.fixture
def scenario(ledger, clock):
    """A small ledger with every kind of transfer; returns ``{key: transfer id}`` and more."""
    ids = {}

    def keep(result):
        ids[result.transfer.key] = result.transfer.id

    keep(ledger.grant("alice", 10_000, key="g1", reason="r", actor="a",
                      expires_at=clock.now + timedelta(hours=1)))
    keep(ledger.grant("alice", 5_000, key="g2", reason="r", actor="a"))
    keep(ledger.earn("bob", 3_000, key="e1", rule="login"))
    keep(ledger.deduct("alice", 1_000, key="d1", reason="r", actor="a"))
    keep(ledger.hold("alice", 2_000, key="h-pending", actor="s"))
    keep(ledger.hold("alice", 3_000, key="h-partial", actor="s"))
    keep(ledger.post("h-partial", 1_200, key="p-partial", actor="s"))
    keep(ledger.hold("bob", 1_000, key="h-void", actor="s"))
    keep(ledger.void("h-void", key="v1", actor="s"))
    keep(ledger.hold("bob", 500, key="h-full", actor="s"))
    keep(ledger.post("h-full", key="p-full", actor="s"))
    keep(ledger.reverse("d1", key="rev-d1", reason="r", actor="a"))
    keep(ledger.hold("alice", 500, key="h-timeout", actor="s", timeout=timedelta(minutes=5)))
    clock.advance(hours=2)
    ledger.sweep()
    report = verify(ledger.engine)
    assert report.ok, report.to_dict()
    return ids


def failing(engine) -> set[str]:
    report = verify(engine)
    assert set(report.checks) == CHECKS
    return {name for name, check in report.checks.items() if not check.ok}


def sql(engine, statement, **params):
    with engine.begin() as conn:
        return conn.execute(text(statement), params)


def account_id(engine, name):
    with engine.connect() as conn:
        return conn.execute(text("SELECT id FROM credits_accounts WHERE name = :n"),
                            {"n": name}).scalar_one()


def test_consistent_ledger_verifies(ledger, scenario):
    report = verify(ledger.engine)
    assert report.ok
    assert set(report.checks) == CHECKS
    assert report.transfers == len(list(ledger.transfers()))
    assert report.accounts == len(ledger.account_names()) == 5
    as_dict = report.to_dict()
    assert as_dict["ok"] is True
    assert all(c == {"ok": True, "problems": 0, "examples": []} for c in as_dict["checks"].values())


def test_empty_ledger_verifies(ledger):
    assert verify(ledger.engine).ok


def test_tampered_cached_balance(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_accounts SET balance = balance + 5 WHERE name = 'user:bob'")
    report = verify(ledger.engine)
    assert not report.ok
    # The reported balances no longer add up to zero either.
    assert failing(ledger.engine) == {"balances_sum_to_zero", "cached_balances", "lots"}
    assert report.checks["cached_balances"].problems == 1
    assert "user:bob" in report.checks["cached_balances"].examples[0]
    assert report.to_dict()["checks"]["cached_balances"]["ok"] is False


def test_tampered_lot_remaining(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_lots SET remaining = remaining - 1 WHERE transfer_id = :t",
        t=scenario["g2"])
    assert failing(ledger.engine) == {"lots"}


def test_tampered_lot_amount(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_lots SET amount = amount + 1 WHERE transfer_id = :t",
        t=scenario["g2"])
    assert failing(ledger.engine) == {"lots"}


def test_tampered_lot_reserved(ledger, scenario):
    # Move a reservation between two lots of the same account: totals still agree.
    with ledger.engine.begin() as conn:
        lots = conn.execute(text(
            "SELECT l.id, l.reserved, l.remaining FROM credits_lots l "
            "JOIN credits_accounts a ON a.id = l.account_id WHERE a.name = 'user:alice' "
            "ORDER BY l.id")).all()
        src = next(lot for lot in lots if lot.reserved > 0)
        dst = next(lot for lot in lots if lot.id != src.id and lot.remaining > lot.reserved)
        conn.execute(text("UPDATE credits_lots SET reserved = reserved - 1 WHERE id = :i"),
                     {"i": src.id})
        conn.execute(text("UPDATE credits_lots SET reserved = reserved + 1 WHERE id = :i"),
                     {"i": dst.id})
    assert failing(ledger.engine) == {"lots"}


def test_deleted_lot_movement(ledger, scenario):
    sql(ledger.engine, "DELETE FROM credits_lot_movements WHERE transfer_id = :t",
        t=scenario["p-full"])
    assert failing(ledger.engine) == {"lots"}


def test_tampered_hold_state_pending_to_voided(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_holds SET state = 'voided' WHERE transfer_id = :t",
        t=scenario["h-pending"])
    assert failing(ledger.engine) == {"holds_resolved_once", "reserved_matches_holds", "lots"}


def test_tampered_hold_state_posted_to_pending(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_holds SET state = 'pending' WHERE transfer_id = :t",
        t=scenario["h-full"])
    assert failing(ledger.engine) == {"holds_resolved_once", "reserved_matches_holds", "lots"}


def test_tampered_hold_posted_amount(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_holds SET posted = posted + 1 WHERE transfer_id = :t",
        t=scenario["h-partial"])
    assert failing(ledger.engine) == {"holds_resolved_once"}


def test_tampered_hold_amount(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_holds SET amount = amount + 1 WHERE transfer_id = :t",
        t=scenario["h-pending"])
    assert "holds_resolved_once" in failing(ledger.engine)


def _insert_copy(engine, transfer_id, **changes):
    """Insert a raw copy of a transfer row with some columns changed (a forged transfer)."""
    sql(engine, _copy_statement(*changes), source=transfer_id, **changes)


@pytest.mark.parametrize("post_key", ["p-full", "p-partial"])
def test_second_post_inserted_raw(ledger, scenario, post_key):
    _insert_copy(ledger.engine, scenario[post_key], key=f"forged-{post_key}")
    result = failing(ledger.engine)
    assert "holds_resolved_once" in result
    # The forged post also moved money that no lot paid for.
    assert {"cached_balances", "lots"} <= result
    assert result <= {"holds_resolved_once", "cached_balances", "lots", "balances_sum_to_zero"}


def test_void_inserted_raw_for_a_posted_hold(ledger, scenario):
    _insert_copy(ledger.engine, scenario["v1"], key="forged-void",
                 pending_id=scenario["h-full"])
    assert failing(ledger.engine) == {"holds_resolved_once"}


def test_post_without_a_hold(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_transfers SET pending_id = NULL WHERE id = :t",
        t=scenario["p-full"])
    report = verify(ledger.engine)
    assert failing(ledger.engine) == {"holds_resolved_once"}
    assert any("without a hold" in e for e in report.checks["holds_resolved_once"].examples)


def test_tampered_reserved(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_accounts SET reserved = reserved + 1 "
                       "WHERE name = 'user:alice'")
    assert failing(ledger.engine) == {"reserved_matches_holds", "lots"}


def test_reversal_that_does_not_mirror(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_transfers SET amount = amount - 1 WHERE id = :t",
        t=scenario["rev-d1"])
    result = failing(ledger.engine)
    assert "reversals_once" in result
    assert result <= {"reversals_once", "cached_balances", "lots", "balances_sum_to_zero"}


def test_reversal_with_the_wrong_kind(ledger, scenario):
    sql(ledger.engine, "UPDATE credits_transfers SET kind = 'grant' WHERE id = :t",
        t=scenario["rev-d1"])
    assert failing(ledger.engine) == {"reversals_once"}


# --- corruption the schema itself refuses: lift the constraint for the test ------------------


@contextmanager
def constraint_lifted(ledger, table, name, definition):
    """Let raw SQL break a constraint; yields ``execute(statement, **params)``.

    PostgreSQL drops the constraint and restores it afterwards (emptying the ledger first);
    SQLite can only ignore CHECK constraints, per connection.
    """
    engine = ledger.engine
    if engine.dialect.name == "postgresql":
        sql(engine, f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        try:
            yield lambda statement, **params: sql(engine, statement, **params)
        finally:
            reset_ledger(engine)  # the corrupt rows go before the constraint returns
            sql(engine, f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
        return
    if not definition.startswith("CHECK"):
        pytest.skip("SQLite cannot drop a UNIQUE constraint in place")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        try:
            def execute(statement, **params):
                conn.execute(text(statement), params)
                conn.commit()
            yield execute
        finally:
            conn.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")
            conn.commit()


def _copy_statement(*changed):
    """SQL copying one transfer row (``:source``), taking the ``changed`` columns from params."""
    columns = ["key", "kind", "debit_account_id", "credit_account_id", "amount", "created_at",
               "actor", "reason", "request_hash", "pending_id", "reversal_of"]
    select_list = ", ".join(f":{c}" if c in changed else c for c in columns)
    return (f"INSERT INTO credits_transfers ({', '.join(columns)}) "
            f"SELECT {select_list} FROM credits_transfers WHERE id = :source")


def test_overdraft(ledger, scenario):
    with constraint_lifted(ledger, "credits_accounts", "ck_credits_accounts_not_overdrawn",
                           "CHECK (kind = 'system' OR (reserved >= 0 AND balance >= reserved))"
                           ) as execute:
        execute("UPDATE credits_accounts SET balance = reserved - 1 WHERE name = 'user:alice'")
        report = verify(ledger.engine)
        assert not report.checks["no_overdraft"].ok
        assert "user:alice" in report.checks["no_overdraft"].examples[0]


def test_negative_reserved(ledger, scenario):
    with constraint_lifted(ledger, "credits_accounts", "ck_credits_accounts_not_overdrawn",
                           "CHECK (kind = 'system' OR (reserved >= 0 AND balance >= reserved))"
                           ) as execute:
        execute("UPDATE credits_accounts SET reserved = -1 WHERE name = 'user:bob'")
        report = verify(ledger.engine)
        assert not report.checks["no_overdraft"].ok
        assert not report.checks["reserved_matches_holds"].ok


def test_key_applied_twice(ledger, scenario):
    with constraint_lifted(ledger, "credits_transfers", "uq_credits_transfers_key",
                           "UNIQUE (key)") as execute:
        execute(_copy_statement(), source=scenario["e1"])  # the same grant, same key, again
        report = verify(ledger.engine)
        assert not report.checks["keys_applied_once"].ok
        assert "'e1' applied 2 times" in report.checks["keys_applied_once"].examples[0]


def test_reversed_twice(ledger, scenario):
    with constraint_lifted(ledger, "credits_transfers", "uq_credits_transfers_reversal_of",
                           "UNIQUE (reversal_of)") as execute:
        execute(_copy_statement("key"), source=scenario["rev-d1"], key="forged-reversal")
        report = verify(ledger.engine)
        assert not report.checks["reversals_once"].ok
        assert "reversed 2 times" in report.checks["reversals_once"].examples[0]


def test_problem_count_is_exact_and_examples_bounded(ledger, clock):
    for i in range(25):
        ledger.grant(f"u{i}", 10, key=f"g{i}", reason="r", actor="a")
    sql(ledger.engine, "UPDATE credits_accounts SET balance = balance + 1 WHERE kind = 'user'")
    check = verify(ledger.engine).checks["cached_balances"]
    assert check.problems == 25
    assert len(check.examples) == 20
