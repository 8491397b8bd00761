"""``GET /api/me``: the caller's balance and open sessions (time left, cost so far)."""

from __future__ import annotations

from ...ledger import LedgerError
from ...ledger.core import user_account
from ...ledger.errors import InvalidRequest
from ..auth import READ
from ..models import account_to_dict
from .base import APIError, APIHandler


def account_snapshot(context, user: str) -> dict:
    """Balance and open sessions of the hub user ``user`` (blocking: run in a thread)."""
    try:
        account = user_account(user)
    except InvalidRequest as error:
        raise APIError(400, str(error)) from None
    try:
        balance = context.ledger.balance(account)
    except LedgerError:  # no account yet: nothing granted, nothing spent
        balance = None
    sessions = context.sessions.open_sessions(user)
    return account_to_dict(user, balance, sessions, context.clock(), context.notices())


class MeAPIHandler(APIHandler):
    async def get(self):
        model = self.require_user()
        self.require(READ, user=model["name"], groups=model.get("groups") or ())
        self.write_json(await self.run(account_snapshot, self.credits, model["name"]))


default_handlers = [(r"/api/me", MeAPIHandler)]
