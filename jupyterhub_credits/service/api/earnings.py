"""What users earned: ``GET /api/me/earnings`` (own detail) and ``GET /api/leaderboard``.

``api/me/earnings?limit=N&before=ID`` — today's (UTC) earnings per rule against
the rule's caps, claims against their daily bound, whether earning is frozen,
and the caller's events with their outcomes, newest first (``limit`` 1-200,
default 50; ``before`` an event id: the page after it; ``next_before`` gives the
next page, null at the end). Needs ``custom:credits:read`` for the caller.

``api/leaderboard?days=7&limit=10`` — top earners over the last ``days`` (1-366)
days: rank, user and credits earned (the signup bonus and reversed earnings
left out), nothing else. Readable by any user with ``custom:credits:read`` (for
themselves is enough) and by services with it unfiltered. Each (days, limit)
is computed at most once a minute (``EarningService.recent_leaders``).
"""

from __future__ import annotations

from ...earning import EarningError
from ...earning.store import MAX_LEADERBOARD_DAYS
from ...ledger.records import iso
from ...quoting import quote_input
from ..auth import READ, is_user
from .base import APIError, APIHandler

MAX_HISTORY = 200
MAX_LEADERS = 100
MAX_DAYS = MAX_LEADERBOARD_DAYS


def int_argument(handler: APIHandler, name: str, default: int | None, *, minimum: int,
                 maximum: int) -> int | None:
    """A whole-number query argument within bounds; 400 otherwise."""
    text = handler.get_query_argument(name, None)
    if text is None or text == "":
        return default
    # A bound on the text first: int() of thousands of digits is slow, then refused anyway.
    if len(text) > len(str(maximum)) + 1:
        raise APIError(400, f"{name} must be between {minimum} and {maximum}, "
                            f"not {quote_input(text)}")
    try:
        value = int(text)
    except ValueError:
        raise APIError(400, f"{name} must be a whole number, not {quote_input(text)}") from None
    if not minimum <= value <= maximum:
        raise APIError(400, f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def earnings_snapshot(earning, user: str, limit: int, before: int | None) -> dict:
    today = earning.today(user)
    history = earning.history(user, limit=limit, before_id=before)
    return {**today, "history": history,
            "next_before": history[-1]["id"] if len(history) == limit else None}


class MyEarningsAPIHandler(APIHandler):
    async def get(self):
        model = self.require_user()
        user = model["name"]
        self.require(READ, user=user, groups=model.get("groups") or ())
        limit = int_argument(self, "limit", 50, minimum=1, maximum=MAX_HISTORY)
        before = int_argument(self, "before", None, minimum=1, maximum=2**63 - 1)
        earning = self._earning()
        try:
            snapshot = await self.run(earnings_snapshot, earning, user, limit, before)
        except EarningError as error:
            raise APIError(400, str(error)) from None
        self.write_json(snapshot)

    def _earning(self):
        if self.credits.earning is None:
            raise APIError(503, "earning is not available in this service process")
        return self.credits.earning


class LeaderboardAPIHandler(APIHandler):
    async def get(self):
        model = self.require_login()
        if is_user(model):
            self.require(READ, user=model["name"], groups=model.get("groups") or ())
        else:
            self.require(READ)
        days = int_argument(self, "days", 7, minimum=1, maximum=MAX_DAYS)
        limit = int_argument(self, "limit", 10, minimum=1, maximum=MAX_LEADERS)
        if self.credits.earning is None:
            raise APIError(503, "earning is not available in this service process")
        since, leaders = await self.run(self.credits.earning.recent_leaders, days, limit)
        self.write_json({
            "days": days,
            "since": iso(since),
            "leaders": [{"rank": row["rank"], "user": row["user"], "points": row["points"]}
                        for row in leaders],
        })


default_handlers = [
    (r"/api/me/earnings", MyEarningsAPIHandler),
    (r"/api/leaderboard", LeaderboardAPIHandler),
]
