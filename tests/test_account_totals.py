"""Owner accounts' lifetime totals (earned, spent): kept per transfer, backfilled, verified.

Each test runs on SQLite and PostgreSQL and ends with ``verify()`` reporting a consistent
ledger, totals included.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from jupyterhub_credits.ledger import database
from jupyterhub_credits.ledger.core import HoldResolution
from jupyterhub_credits.ledger.schema import accounts
from jupyterhub_credits.ledger.verify import verify


def totals(ledger, name: str) -> tuple[int, int]:
    """(lifetime_earned, lifetime_spent) of an account, straight from its row."""
    with ledger.engine.connect() as conn:
        row = conn.execute(select(accounts.c.lifetime_earned, accounts.c.lifetime_spent)
                           .where(accounts.c.name == name)).one()
    return int(row.lifetime_earned), int(row.lifetime_spent)


def every_total(ledger) -> dict[str, tuple[int, int]]:
    with ledger.engine.connect() as conn:
        return {row.name: (int(row.lifetime_earned), int(row.lifetime_spent)) for row in
                conn.execute(select(accounts.c.name, accounts.c.lifetime_earned,
                                    accounts.c.lifetime_spent))}


def sql(engine, statement, **params):
    with engine.begin() as conn:
        conn.execute(text(statement), params)


pytestmark = pytest.mark.usefixtures("ledger_verifies_after")


def test_new_accounts_start_at_zero(ledger):
    ledger.grant("alice", 5_000, key="g", reason="r", actor="admin")
    assert totals(ledger, "user:alice") == (0, 0)
    # System accounts never carry totals.
    assert totals(ledger, "system:issuance") == (0, 0)


def test_earn_adds_to_earned_and_grant_does_not(ledger):
    ledger.earn("alice", 700, key="e1", rule="login")
    ledger.earn("alice", 300, key="e2", rule="notebook")
    ledger.grant("alice", 5_000, key="g", reason="r", actor="admin")
    ledger.earn("group:lab", 50, key="e3", rule="login")
    assert totals(ledger, "user:alice") == (1_000, 0)
    assert totals(ledger, "group:lab") == (50, 0)


def test_duplicate_earn_counts_once(ledger):
    ledger.earn("alice", 700, key="e1", rule="login")
    assert ledger.earn("alice", 700, key="e1", rule="login").duplicate
    assert totals(ledger, "user:alice") == (700, 0)


def test_post_adds_to_spent_hold_void_and_deduct_do_not(ledger):
    ledger.grant("alice", 10_000, key="g", reason="r", actor="admin")
    ledger.hold("alice", 3_000, key="h1", actor="spawner")
    assert totals(ledger, "user:alice") == (0, 0)
    ledger.post("h1", 1_200, key="p1", actor="spawner")  # partial: the rest is voided
    ledger.hold("alice", 1_000, key="h2", actor="spawner")
    ledger.post("h2", key="p2", actor="spawner")  # all of it
    ledger.hold("alice", 500, key="h3", actor="spawner")
    ledger.void("h3", key="v3", actor="spawner")
    ledger.deduct("alice", 100, key="d", reason="r", actor="admin")
    assert totals(ledger, "user:alice") == (0, 2_200)
    assert ledger.post("h2", key="p2", actor="spawner").duplicate
    assert totals(ledger, "user:alice") == (0, 2_200)


def test_resolve_holds_adds_what_each_post_moves(ledger):
    ledger.grant("alice", 10_000, key="g", reason="r", actor="admin")
    ledger.grant("bob", 10_000, key="gb", reason="r", actor="admin")
    for key, owner in (("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob")):
        ledger.hold(owner, 1_000, key=key, actor="meter")
    results = ledger.resolve_holds([
        HoldResolution("a1", 1_000, "a1-post"), HoldResolution("a2", 250, "a2-post"),
        HoldResolution("a3", 0, "a3-void"), HoldResolution("b1", 400, "b1-post")],
        actor="meter")
    assert [r.transfer.kind for r in results] == ["post", "post", "void", "post"]
    assert totals(ledger, "user:alice") == (0, 1_250)
    assert totals(ledger, "user:bob") == (0, 400)
    # A retry changes nothing.
    ledger.resolve_holds([HoldResolution("a1", 1_000, "a1-post"),
                          HoldResolution("b1", 400, "b1-post")], actor="meter")
    assert totals(ledger, "user:alice") == (0, 1_250)
    assert totals(ledger, "user:bob") == (0, 400)


def test_expiry_and_timeouts_leave_the_totals(ledger, clock):
    ledger.earn("alice", 1_000, key="e", rule="login", expires_at=clock.now + timedelta(hours=1))
    ledger.hold("alice", 400, key="h", actor="spawner", timeout=timedelta(minutes=5))
    clock.advance(hours=2)
    report = ledger.sweep()
    assert report.holds_voided and report.expired_units == 1_000
    assert totals(ledger, "user:alice") == (1_000, 0)


def test_reversing_an_earn_takes_back_what_it_reverses(ledger):
    ledger.earn("alice", 1_000, key="e1", rule="login")
    ledger.earn("alice", 2_000, key="e2", rule="login")
    ledger.reverse("e1", key="r1", reason="fraud", actor="admin")
    assert totals(ledger, "user:alice") == (2_000, 0)
    # Part of e2's lot spent: the reversal takes back only the rest, and so does the total.
    ledger.hold("alice", 1_500, key="h", actor="spawner")
    ledger.post("h", key="p", actor="spawner")
    assert totals(ledger, "user:alice") == (2_000, 1_500)
    reversal = ledger.reverse("e2", key="r2", reason="fraud", actor="admin").transfer
    assert reversal.amount == 500
    assert totals(ledger, "user:alice") == (1_500, 1_500)
    assert ledger.reverse("e2", key="r2", reason="fraud", actor="admin").duplicate
    assert totals(ledger, "user:alice") == (1_500, 1_500)


def test_reversing_a_post_gives_back_the_spending(ledger):
    ledger.grant("group:lab", 5_000, key="g", reason="r", actor="admin")
    ledger.hold("group:lab", 2_000, key="h", actor="spawner")
    ledger.post("h", 1_800, key="p", actor="spawner")
    assert totals(ledger, "group:lab") == (0, 1_800)
    ledger.reverse("p", key="rp", reason="outage", actor="admin")
    assert totals(ledger, "group:lab") == (0, 0)


def test_reversing_grants_and_deducts_leaves_the_totals(ledger):
    ledger.grant("alice", 5_000, key="g", reason="r", actor="admin")
    ledger.earn("alice", 1_000, key="e", rule="login")
    ledger.hold("alice", 1_000, key="h", actor="spawner")
    ledger.post("h", key="p", actor="spawner")
    ledger.deduct("alice", 500, key="d", reason="r", actor="admin")
    ledger.reverse("g", key="rg", reason="r", actor="admin")
    ledger.reverse("d", key="rd", reason="r", actor="admin")
    assert totals(ledger, "user:alice") == (1_000, 1_000)


def test_verify_reports_a_tampered_total(ledger):
    ledger.earn("alice", 1_000, key="e", rule="login")
    ledger.hold("alice", 400, key="h", actor="spawner")
    ledger.post("h", key="p", actor="spawner")
    assert verify(ledger.engine).ok
    sql(ledger.engine, "UPDATE credits_accounts SET lifetime_spent = lifetime_spent + 1 "
                       "WHERE name = 'user:alice'")
    report = verify(ledger.engine)
    failing = {name for name, check in report.checks.items() if not check.ok}
    assert failing == {"cached_balances"}
    assert report.checks["cached_balances"].examples == [
        "user:alice: cached lifetime_spent 401 != 400 from transfers"]
    sql(ledger.engine, "UPDATE credits_accounts SET lifetime_spent = 400, "
                       "lifetime_earned = 999 WHERE name = 'user:alice'")
    report = verify(ledger.engine)
    assert report.checks["cached_balances"].examples == [
        "user:alice: cached lifetime_earned 999 != 1000 from transfers"]
    sql(ledger.engine, "UPDATE credits_accounts SET lifetime_earned = 1000 "
                       "WHERE name = 'user:alice'")


def _migrate(engine, action: str, revision: str) -> None:
    with engine.begin() as connection:
        getattr(command, action)(database.alembic_config(connection), revision)


def test_migration_backfills_the_totals_from_transfers(ledger, clock):
    """Downgraded to 0005 (columns gone) and upgraded again: the same totals, from SQL."""
    ledger.earn("alice", 1_000, key="e1", rule="login")
    ledger.earn("alice", 2_000, key="e2", rule="login")
    ledger.grant("alice", 9_000, key="g", reason="r", actor="admin")
    ledger.earn("group:lab", 3_000, key="e3", rule="login")
    ledger.grant("bob", 4_000, key="gb", reason="r", actor="admin")
    ledger.hold("alice", 2_500, key="h1", actor="spawner")
    ledger.post("h1", key="p1", actor="spawner")  # from e1, then e2 (soonest, then id)
    ledger.hold("alice", 600, key="h2", actor="spawner")
    ledger.post("h2", 100, key="p2", actor="spawner")
    ledger.hold("group:lab", 700, key="h3", actor="spawner")
    ledger.resolve_holds([HoldResolution("h3", 700, "p3")], actor="meter")
    ledger.hold("bob", 1_000, key="h4", actor="spawner")
    ledger.post("h4", key="p4", actor="spawner")
    # e2 paid 1,500 of p1 and 100 of p2: its reversal takes back the 400 left.
    assert ledger.reverse("e2", key="r-e2", reason="r", actor="admin").transfer.amount == 400
    ledger.reverse("p4", key="r-p4", reason="r", actor="admin")
    ledger.reverse("g", key="r-g", reason="r", actor="admin")
    before = every_total(ledger)
    assert before["user:alice"] == (2_600, 2_600)
    assert before["group:lab"] == (3_000, 700)
    assert before["user:bob"] == (0, 0)

    _migrate(ledger.engine, "downgrade", "0005")
    columns = {c["name"] for c in inspect(ledger.engine).get_columns("credits_accounts")}
    assert "lifetime_earned" not in columns and "lifetime_spent" not in columns
    assert database.current_revision(ledger.engine) == "0005"

    _migrate(ledger.engine, "upgrade", "head")
    assert database.current_revision(ledger.engine) == database.head_revision()
    assert every_total(ledger) == before
    # The ledger goes on keeping them.
    ledger.earn("alice", 10, key="e4", rule="login")
    assert totals(ledger, "user:alice") == (2_610, 2_600)
