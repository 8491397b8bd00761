"""Admin: ``GET /api/admin/export.csv?since=YYYY-MM-DD&until=YYYY-MM-DD`` — the transfer log.

One row per transfer, oldest first, columns ``ledger.records.CSV_COLUMNS``;
``since`` and ``until`` (both optional, UTC days, ``until`` included) bound when
the transfers were made; a malformed date, or ``since`` after ``until``, is a 400.
Every cell that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return) has a ``'`` in front (``ledger.export.defuse``).

The answer is streamed: ``ledger.export.csv_chunks`` reads the log a batch at a
time from one snapshot, on a thread of its own (a generator's database
transaction stays on one thread), and each chunk is written and flushed before
the next is read, so memory stays flat however long the log is and a slow
client slows the reading instead of piling chunks up. ``Content-Type:
text/csv``, ``Content-Disposition: attachment`` with the dates in the file name.
Needs ``custom:credits:admin``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, time, timedelta, timezone

from tornado.iostream import StreamClosedError

from ...ledger.export import csv_chunks
from ...quoting import quote_input
from ..auth import ADMIN
from .base import APIError, APIHandler

log = logging.getLogger(__name__)

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
#: Transfers a chunk holds: about 200 kB of CSV.
BATCH = 1000
_END = object()


def parse_day(handler: APIHandler, name: str) -> date | None:
    text = handler.get_query_argument(name, "") or ""
    if not text:
        return None
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise APIError(400, f"{name} must be a date YYYY-MM-DD, not {quote_input(text)}") \
            from None


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def file_name(since: date | None, until: date | None) -> str:
    first = since.isoformat() if since else "start"
    last = until.isoformat() if until else "now"
    return f"credits-transfers-{first}-to-{last}.csv"


class ExportAPIHandler(APIHandler):
    async def get(self):
        self.require(ADMIN)
        since = parse_day(self, "since")
        until = parse_day(self, "until")
        if since and until and since > until:
            raise APIError(400, f"since ({since}) is after until ({until})")
        end = None
        if until is not None:
            if until == date.max:
                raise APIError(400, f"until must be before {date.max}")
            end = day_start(until + timedelta(days=1))  # until is included
        chunks = csv_chunks(self.credits.ledger, since=since and day_start(since), until=end,
                            batch=BATCH)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{file_name(since, until)}"')
        # One thread for this export: the generator and its read transaction stay on it.
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="credits-export")
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await loop.run_in_executor(reader, next, chunks, _END)
                if chunk is _END:
                    break
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            log.info("CSV export: the client went away; stopped reading")
        finally:
            await loop.run_in_executor(reader, chunks.close)  # ends the read transaction
            reader.shutdown(wait=False)


default_handlers = [(r"/api/admin/export\.csv", ExportAPIHandler)]
