"""``jupyterhub-credits apply`` under hostile lines: each gets its own error, the rest still run.

The contract (README, ``ledger/operations.py``): one result line per input
line, in order; a bad line is answered ``"ok": false`` with an error and never
stops the run. Errors quote at most a few dozen characters of what was sent.
"""

from __future__ import annotations

import io
import json
import sys
import time

import pytest

from jupyterhub_credits.cli import main

#: No error a line gets should be longer than this.
SHORT = 300


@pytest.fixture
def apply(db_url, capsys):
    """Run ``apply -`` on ``text``: (exit code, result records)."""

    def run(text: str):
        sys.stdin = io.StringIO(text)
        try:
            code = main(["--db", db_url, "--actor", "admin:test", "apply", "-"])
        finally:
            sys.stdin = sys.__stdin__
        out, _ = capsys.readouterr()
        return code, [json.loads(line) for line in out.splitlines()]

    return run


def grant_line(key: str, amount: str = "1", **extra) -> str:
    return json.dumps({"op": "grant", "key": key, "user": "bob", "amount": amount,
                       "reason": "bulk", **extra})


HOSTILE_LINES = [
    # 5,000 digits: more than json.loads will turn into an int (ValueError, not a JSONDecodeError).
    '{"op": "grant", "key": "digits", "user": "bob", "amount": ' + "9" * 5000 + ', '
    '"reason": "x"}',
    "[" * 100_000,  # RecursionError in json.loads
    '{"op": "grant", "key": "deep-meta", "user": "bob", "amount": "1", "reason": "x", '
    '"metadata": {"m": ' + "[" * 990 + "]" * 990 + "}}",
    # Decimals whose fixed-point form would have a billion digits.
    '{"op": "grant", "key": "huge-amount", "user": "bob", "amount": 1e999999999, "reason": "x"}',
    '{"op": "grant", "key": "huge-days", "user": "bob", "amount": "1", "reason": "x", '
    '"expires_in_days": 1E+999999999999999999}',
    json.dumps({"op": "g" * 100_000, "key": "long-op"}),
    grant_line("long-amount", "1" * 100_000),
    grant_line("long-field", **{"f" * 100_000: 1}),
    json.dumps({"op": "hold", "key": "long-timeout", "user": "bob", "amount": "1",
                "timeout_s": "t" * 100_000}),
]


def test_each_hostile_line_fails_alone_and_the_rest_still_run(apply):
    text = "\n".join([grant_line("before"), *HOSTILE_LINES, grant_line("after")]) + "\n"
    started = time.perf_counter()
    code, results = apply(text)
    assert time.perf_counter() - started < 30  # 1e999999999 once meant a billion-digit int
    assert code == 1
    assert [r["line"] for r in results] == list(range(1, len(HOSTILE_LINES) + 3))
    assert results[0]["ok"] and results[-1]["ok"]
    for result in results[1:-1]:
        assert result["ok"] is False, result
        assert result["error"] and len(result["error"]) < SHORT, result["error"][:2000]
        assert not any(c * 50 in result["error"] for c in "9gf1t")
    errors = [r["error"] for r in results[1:-1]]
    assert "invalid JSON" in errors[0] and "invalid JSON" in errors[1]
    assert "nested too deeply" in errors[2]
    assert "larger than" in errors[3]
    assert "expires_in_days" in errors[4]
    assert "unknown op" in errors[5] and "unknown field" in errors[7]


def test_numbers_in_metadata_stay_exact_and_a_huge_one_stays_short(apply, db_url):
    from jupyterhub_credits.ledger import Ledger

    line = ('{"op": "grant", "key": "meta", "user": "bob", "amount": "1", "reason": "x", '
            '"metadata": {"n": 12, "x": 1.5, "big": 1e999999999, "whole": 2E+3}}')
    started = time.perf_counter()
    code, results = apply(line + "\n")
    assert time.perf_counter() - started < 10  # int(1E+999999999) wrote a billion digits
    assert code == 0 and results[0]["ok"], results
    ledger = Ledger.open(db_url)
    try:
        assert ledger.get_transfer("meta").metadata == {
            "n": 12, "x": "1.5", "big": "1E+999999999", "whole": 2000}
    finally:
        ledger.close()
