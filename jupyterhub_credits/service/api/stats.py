"""Admin: ``GET /api/admin/stats?days=30`` — what flowed through the system lately.

``days`` 1-366 (default 30), counted in UTC days back from today (today included):

- ``flows``: one row per day, oldest first, zeros included:
  ``{"date": "YYYY-MM-DD", "issued", "spent"}`` — issued = granted + earned,
  spent = session charges posted (decimal strings);
- ``gpu_hours``: ``{"date", "gpu_type", "hours"}`` — GPU-hours of ready time
  (× GPUs), a session split across the UTC days it ran on (2 decimals);
- ``top_consumers``: the 10 users who spent most in the window, ``{"user", "spent"}``.

Needs ``custom:credits:admin``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from ...ledger import format_amount
from ...ledger.reports import daily_flows, top_consumers
from ...sessions.usage import gpu_hours_by_day
from ..auth import ADMIN
from .base import APIHandler
from .earnings import int_argument

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP = 10
_HOURS_PLACES = Decimal("0.01")


def _date(day) -> str:
    return day.isoformat()[:10]


def stats_snapshot(context, days: int) -> dict:
    """The three series for the last ``days`` days (blocking: run in a thread)."""
    now = context.clock()
    ledger = context.ledger
    return {
        "days": days,
        "flows": [{"date": _date(day), "issued": format_amount(issued),
                   "spent": format_amount(spent)}
                  for day, issued, spent in daily_flows(ledger, days=days, now=now)],
        "gpu_hours": [{"date": _date(day), "gpu_type": gpu_type,
                       "hours": str(Decimal(hours).quantize(_HOURS_PLACES, ROUND_HALF_UP))}
                      for day, gpu_type, hours in gpu_hours_by_day(ledger.engine, days=days,
                                                                   now=now)],
        "top_consumers": [{"user": user, "spent": format_amount(spent)}
                          for user, spent in top_consumers(ledger, days=days, now=now,
                                                           limit=TOP)],
    }


class StatsAPIHandler(APIHandler):
    async def get(self):
        self.require(ADMIN)
        days = int_argument(self, "days", DEFAULT_DAYS, minimum=1, maximum=MAX_DAYS)
        self.write_json(await self.run(stats_snapshot, self.credits, days))


default_handlers = [(r"/api/admin/stats", StatsAPIHandler)]
