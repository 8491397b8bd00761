"""``GET /api/users/{user}``: any user's balance and sessions, for admins (or their readers)."""

from __future__ import annotations

from .base import APIHandler
from .me import account_snapshot


class UserAPIHandler(APIHandler):
    async def get(self, name: str):
        await self.readable_user(name)
        self.write_json(await self.run(account_snapshot, self.credits, name))


default_handlers = [(r"/api/users/([^/]+)", UserAPIHandler)]
