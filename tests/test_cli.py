"""The command line is a contract: names, JSON fields and exit codes, on both backends."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jupyterhub_credits.cli import main
from jupyterhub_credits.ledger.database import head_revision

CLI = [sys.executable, "-m", "jupyterhub_credits.cli"]
SCRIPT = Path(sys.executable).with_name("jupyterhub-credits")


@pytest.fixture
def cli(db_url, capsys):
    """Run the CLI in-process against the test database: returns (exit code, stdout, stderr)."""

    def run(*args, stdin: str | None = None):
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        try:
            try:
                code = main(["--db", db_url, "--actor", "admin:test", *args])
            except SystemExit as exit_:
                code = exit_.code
        finally:
            sys.stdin = sys.__stdin__
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_grant_then_balance_json_is_the_contract(cli):
    assert cli("grant", "alice", "12.5", "--reason", "welcome")[0] == 0
    code, out, _ = cli("balance", "alice", "--json")
    assert code == 0
    assert json.loads(out) == {"account": "user:alice", "available": "12.50",
                               "reserved": "0.00", "total": "12.50"}


def test_grant_with_key_is_idempotent(cli):
    first = cli("grant", "alice", "10", "--reason", "r", "--key", "k1", "--json")
    again = cli("grant", "alice", "10", "--reason", "r", "--key", "k1", "--json")
    assert json.loads(first[1]) == {"key": "k1", "ok": True, "transfer": 1, "duplicate": False}
    assert json.loads(again[1]) == {"key": "k1", "ok": True, "transfer": 1, "duplicate": True}
    assert json.loads(cli("balance", "alice", "--json")[1])["total"] == "10.00"
    code, _, err = cli("grant", "alice", "11", "--reason", "r", "--key", "k1")
    assert code == 1 and "already used for a different request" in err


@pytest.mark.parametrize("amount", ["-1", "0", "1.2345", "NaN", "abc", "1e3", "9" * 30])
def test_bad_amounts_are_usage_errors(cli, amount):
    code, out, err = cli("grant", "alice", amount, "--reason", "r")
    assert code == 2
    assert "invalid amount" in err and "Traceback" not in err
    assert out == ""


def test_refusals_exit_1_with_a_clear_message(cli):
    code, _, err = cli("deduct", "nobody", "1", "--reason", "r")
    assert code == 1 and "unknown account: user:nobody" in err
    cli("grant", "alice", "1", "--reason", "r")
    code, _, err = cli("deduct", "alice", "2", "--reason", "r")
    assert code == 1 and "insufficient funds" in err
    code, _, err = cli("balance", "ghost")
    assert code == 1 and "unknown account" in err


def test_usage_errors_exit_2(cli):
    assert cli("grant", "alice", "1")[0] == 2  # --reason is required
    assert cli("frobnicate")[0] == 2
    assert cli("history", "alice", "--limit", "0")[0] == 2
    assert cli("grant", "alice", "1", "--reason", "r", "--expires-in", "-3")[0] == 2
    assert cli("export", "--since", "yesterday")[0] == 2
    assert cli("grant", "system:issuance", "1", "--reason", "r")[0] == 2


def test_deduct_history_and_reverse(cli):
    cli("grant", "alice", "20", "--reason", "welcome")
    assert cli("deduct", "alice", "5.25", "--reason", "manual charge")[0] == 0
    code, out, _ = cli("history", "alice", "--json")
    records = json.loads(out)
    assert [(r["kind"], r["change"]) for r in records] == [("deduct", "-5.25"),
                                                           ("grant", "+20.00")]
    deduct_id = records[0]["id"]
    code, out, _ = cli("reverse", str(deduct_id), "--reason", "charged by mistake", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    assert json.loads(cli("balance", "alice", "--json")[1])["total"] == "20.00"
    code, _, err = cli("reverse", str(deduct_id), "--reason", "again")
    assert code == 1 and "already reversed" in err
    assert len(json.loads(cli("history", "alice", "--json", "--limit", "2")[1])) == 2


def test_grant_expiring_credits_then_sweep(cli, monkeypatch, clock):
    monkeypatch.setattr("jupyterhub_credits.cli.now", clock)
    assert cli("grant", "alice", "5", "--reason", "trial", "--expires-in", "2")[0] == 0
    cli("grant", "alice", "1", "--reason", "forever")
    clock.advance(days=1)
    assert cli("sweep", "--json")[1].startswith('{"holds_voided": 0, "lots_expired": 0')
    assert json.loads(cli("balance", "alice", "--json")[1])["total"] == "6.00"
    clock.advance(days=1, seconds=1)
    # Lapsed credits are no longer shown, even before the sweep moves them.
    assert json.loads(cli("balance", "alice", "--json")[1])["total"] == "1.00"
    code, out, _ = cli("sweep", "--json")
    assert code == 0 and json.loads(out) == {"holds_voided": 0, "lots_expired": 1,
                                             "expired": "5.00"}
    assert json.loads(cli("balance", "system:expired", "--json")[1])["total"] == "5.00"


APPLY_INPUT = "\n".join([
    json.dumps({"op": "grant", "key": "g1", "user": "bob", "amount": "10.5", "reason": "bulk",
                "expires_in_days": 30}),
    json.dumps({"op": "hold", "key": "h1", "user": "bob", "amount": "4", "timeout_s": 600}),
    "this is not json",
    json.dumps({"op": "post", "key": "p1", "hold": "h1", "amount": "1.25"}),
    json.dumps({"op": "grant", "key": "g1", "user": "bob", "amount": "10.50", "reason": "bulk",
                "expires_in_days": 30}),
    json.dumps({"op": "grant", "key": "g1", "user": "bob", "amount": "99", "reason": "bulk"}),
    json.dumps({"op": "void", "key": "v1", "hold": "h1"}),
    json.dumps({"op": "deduct", "key": "d1", "user": "bob", "amount": "100", "reason": "x"}),
    json.dumps({"op": "hold", "key": "h2", "user": "bob", "amount": "2"}),
    json.dumps({"op": "void", "key": "v2", "hold": "h2"}),
    json.dumps({"op": "reverse", "key": "r1", "transfer": "p1", "reason": "refund"}),
    json.dumps({"op": "teleport", "key": "t1"}),
    json.dumps({"op": "grant", "key": "g2", "user": "bob", "amount": 2.5, "reason": "number"}),
    json.dumps({"op": "grant", "key": "g3", "user": "bob", "amount": "1", "reason": "x",
                "amuont": "2"}),
]) + "\n"


def test_apply_answers_every_line_in_order(cli, tmp_path):
    source = tmp_path / "ops.jsonl"
    source.write_text(APPLY_INPUT)
    code, out, err = cli("apply", str(source))
    results = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # some lines were refused
    assert [r["line"] for r in results] == list(range(1, 15))
    by_line = {r["line"]: r for r in results}
    assert by_line[1] == {"key": "g1", "ok": True, "transfer": 1, "duplicate": False, "line": 1}
    assert by_line[2]["ok"] and by_line[4]["ok"]
    assert by_line[3]["ok"] is False and "invalid JSON" in by_line[3]["error"]
    assert by_line[5] == {"key": "g1", "ok": True, "transfer": 1, "duplicate": True, "line": 5}
    assert by_line[6]["ok"] is False and "different request" in by_line[6]["error"]
    assert by_line[7]["ok"] is False and "already posted" in by_line[7]["error"]
    assert by_line[8]["ok"] is False and by_line[8]["error"].startswith("insufficient funds")
    assert by_line[9]["ok"] and by_line[10]["ok"] and by_line[11]["ok"]
    assert by_line[12]["ok"] is False and "unknown op" in by_line[12]["error"]
    assert by_line[13]["ok"] is True  # JSON numbers are read as exact decimals
    assert by_line[14]["ok"] is False and "unknown field amuont" in by_line[14]["error"]
    # 10.5 - 1.25 (posted) + 1.25 (refund) + 2.5 = 13.00
    assert json.loads(cli("balance", "bob", "--json")[1])["total"] == "13.00"
    assert cli("verify")[0] == 0
    # Applying the same file again changes nothing.
    cli("apply", str(source))
    assert json.loads(cli("balance", "bob", "--json")[1])["total"] == "13.00"


def test_apply_reads_stdin(cli):
    lines = json.dumps({"op": "grant", "key": "s1", "user": "carol", "amount": "3",
                        "reason": "r"}) + "\n"
    code, out, _ = cli("apply", "-", stdin=lines)
    assert code == 0 and json.loads(out)["transfer"] == 1


def test_apply_missing_file_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("apply", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read" in err


def test_verify_and_export(cli):
    cli("grant", "alice", "3", "--reason", "a, \"quoted\" reason", "--key", "k")
    cli("deduct", "alice", "1", "--reason", "b")
    code, out, _ = cli("verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["transfers"] == 2
    code, out, _ = cli("export")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["kind"], r["amount"], r["units"]) for r in rows] == [("grant", "3.00", "3000"),
                                                                    ("deduct", "1.00", "1000")]
    assert rows[0]["reason"] == 'a, "quoted" reason' and rows[0]["key"] == "k"
    code, out, _ = cli("export", "--since", "2999-01-01")
    assert out.strip().splitlines() == [out.strip().splitlines()[0]]  # header only


def test_verify_fails_with_exit_1_when_tampered(cli, db_url):
    from sqlalchemy import text

    from jupyterhub_credits.ledger.database import make_engine

    cli("grant", "alice", "3", "--reason", "r")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE credits_accounts SET balance = balance + 1 "
                          "WHERE name = 'user:alice'"))
    engine.dispose()
    code, out, _ = cli("verify")
    assert code == 1 and "FAIL cached_balances" in out


def test_db_upgrade_reports_the_revision(cli):
    code, out, _ = cli("db", "upgrade")
    assert code == 0 and out.strip() == head_revision()


def test_console_script_and_env_url(db_url, tmp_path):
    """The installed entry point, configured through JUPYTERHUB_CREDITS_DB_URL."""
    env = {"JUPYTERHUB_CREDITS_DB_URL": db_url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([str(SCRIPT), "grant", "dora", "7", "--reason", "r"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([str(SCRIPT), "balance", "dora", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert json.loads(run.stdout)["available"] == "7.00"


def test_unreachable_database_is_a_clear_error(tmp_path):
    run = subprocess.run(
        CLI + ["--db", "postgresql://nobody:secret@127.0.0.1:1/none", "balance", "a"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "database error" in run.stderr and "Traceback" not in run.stderr
    assert "secret" not in run.stderr
