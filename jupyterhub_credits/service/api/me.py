"""``GET /api/me``: the caller's balance and open sessions (time left, cost so far)."""

from __future__ import annotations

from ...ledger import LedgerError
from ..auth import READ
from ..models import account_to_dict
from .base import APIHandler


def account_snapshot(context, user: str) -> dict:
    """Balance and open sessions of ``user``, read together (blocking: run in a thread)."""
    try:
        balance = context.ledger.balance(f"user:{user}")
    except LedgerError:  # no account yet: nothing granted, nothing spent
        balance = None
    sessions = context.store.open_sessions(user)
    return account_to_dict(user, balance, sessions, context.clock(), context.notices())


class MeAPIHandler(APIHandler):
    async def get(self):
        model = self.require_user()
        self.require(READ, user=model["name"], groups=model.get("groups") or ())
        self.write_json(await self.run(account_snapshot, self.credits, model["name"]))


default_handlers = [(r"/api/me", MeAPIHandler)]
