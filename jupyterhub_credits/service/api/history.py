"""A user's money in detail: the lots credits sit in, and every transfer, newest first.

``GET /api/me/lots`` and ``GET /api/users/{user}/lots`` — the lots with credits
left (``remaining > 0``), soonest expiry first, never-expiring last:
``{"lots": [{"id", "amount", "remaining", "reserved", "available",
"expires_at", "created_at", "kind", "reason"}], "expiring_soon", "soon_days"}``
(``expiring_soon``: what expires within ``soon_days`` = 30 days).

``GET /api/me/history`` and ``GET /api/users/{user}/history`` —
``?kind=<grants|earnings|sessions|expiry|reversals>&before=<transfer id>&limit=<1-200>``
→ ``{"transfers": [transfer with its signed "change"], "next_before"}``, newest
first; ``next_before`` is the ``before`` of the next page, null at the end.

``GET /api/users/{user}/earnings`` — that user's earnings as ``/api/me/earnings``
shows one's own (``limit``, ``before`` likewise).

The ``me`` paths need ``custom:credits:read`` for the caller; the ``users``
paths the same scope for that user (admins have it; ``!user=NAME`` or
``!group=G`` for one of the user's groups count too), checked before the user's
existence is told (403, then 404 for a name the hub does not know).
"""

from __future__ import annotations

from ...earning import EarningError
from ...ledger import format_amount
from ...ledger.core import user_account
from ...ledger.errors import InvalidRequest
from ...ledger.records import iso, transfer_to_dict
from ...ledger.reports import HISTORY_KINDS, expiring_within, history_page, lots_of
from ...quoting import quote_input
from ..auth import READ
from .base import APIError, APIHandler
from .earnings import MAX_HISTORY, earnings_snapshot, int_argument

#: ``expiring_soon`` counts lots expiring within this many days.
SOON_DAYS = 30
DEFAULT_LIMIT = 50
MAX_ID = 2**63 - 1


def _account(user: str) -> str:
    try:
        return user_account(user)
    except InvalidRequest as error:
        raise APIError(400, str(error)) from None


def lot_to_dict(lot) -> dict:
    return {
        "id": lot.id,
        "amount": format_amount(lot.amount),
        "remaining": format_amount(lot.remaining),
        "reserved": format_amount(lot.reserved),
        "available": format_amount(lot.remaining - lot.reserved),
        "expires_at": iso(lot.expires_at),
        "created_at": iso(lot.created_at),
        "kind": lot.kind,
        "reason": lot.reason,
    }


def lots_snapshot(context, user: str) -> dict:
    """The lots of hub user ``user`` with credits left (blocking: run in a thread)."""
    lots = lots_of(context.ledger, _account(user))  # no account yet: no lots
    soon = expiring_within(lots, context.clock(), SOON_DAYS)
    return {"lots": [lot_to_dict(lot) for lot in lots], "expiring_soon": format_amount(soon),
            "soon_days": SOON_DAYS}


def history_snapshot(context, user: str, *, kind: str | None, before: int | None,
                     limit: int) -> dict:
    """One page of hub user ``user``'s transfers, newest first (blocking)."""
    account = _account(user)
    # No account yet: an empty page. kind, before and limit were checked by the handler.
    transfers, next_before = history_page(context.ledger, account, kind=kind, before=before,
                                          limit=limit)
    return {"transfers": [transfer_to_dict(t, account=account) for t in transfers],
            "next_before": next_before}


def history_arguments(handler: APIHandler) -> dict:
    """``kind``, ``before`` and ``limit`` from the query; 400 naming what is allowed."""
    kind = handler.get_query_argument("kind", None) or None
    if kind is not None and kind not in HISTORY_KINDS:
        raise APIError(400, f"kind must be one of {', '.join(HISTORY_KINDS)} (or left out), "
                            f"not {quote_input(kind)}")
    return {
        "kind": kind,
        "before": int_argument(handler, "before", None, minimum=1, maximum=MAX_ID),
        "limit": int_argument(handler, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_HISTORY),
    }


class _OwnHandler(APIHandler):
    """The caller's own data: ``custom:credits:read`` for the caller."""

    def own_user(self) -> str:
        model = self.require_user()
        self.require(READ, user=model["name"], groups=model.get("groups") or ())
        return model["name"]


class MyLotsAPIHandler(_OwnHandler):
    async def get(self):
        self.write_json(await self.run(lots_snapshot, self.credits, self.own_user()))


class MyHistoryAPIHandler(_OwnHandler):
    async def get(self):
        user = self.own_user()
        arguments = history_arguments(self)
        self.write_json(await self.run(history_snapshot, self.credits, user, **arguments))


class UserLotsAPIHandler(APIHandler):
    async def get(self, name: str):
        user = (await self.readable_user(name))["name"]
        self.write_json(await self.run(lots_snapshot, self.credits, user))


class UserHistoryAPIHandler(APIHandler):
    async def get(self, name: str):
        user = (await self.readable_user(name))["name"]
        arguments = history_arguments(self)
        self.write_json(await self.run(history_snapshot, self.credits, user, **arguments))


class UserEarningsAPIHandler(APIHandler):
    async def get(self, name: str):
        user = (await self.readable_user(name))["name"]
        limit = int_argument(self, "limit", 50, minimum=1, maximum=MAX_HISTORY)
        before = int_argument(self, "before", None, minimum=1, maximum=MAX_ID)
        earning = self.credits.earning
        if earning is None:
            raise APIError(503, "earning is not available in this service process")
        try:
            snapshot = await self.run(earnings_snapshot, earning, user, limit, before)
        except EarningError as error:
            raise APIError(400, str(error)) from None
        self.write_json(snapshot)


default_handlers = [
    (r"/api/me/lots", MyLotsAPIHandler),
    (r"/api/me/history", MyHistoryAPIHandler),
    (r"/api/users/([^/]+)/lots", UserLotsAPIHandler),
    (r"/api/users/([^/]+)/history", UserHistoryAPIHandler),
    (r"/api/users/([^/]+)/earnings", UserEarningsAPIHandler),
]
