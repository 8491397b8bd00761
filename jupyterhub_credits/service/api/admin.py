"""``GET /api/users/{user}``: any user's balance and sessions, for admins (or their readers)."""

from __future__ import annotations

from ...quoting import quote_input
from ..auth import READ
from ..hub import HubUnavailable
from .base import APIError, APIHandler
from .me import account_snapshot


class UserAPIHandler(APIHandler):
    async def get(self, name: str):
        self.require_login()
        try:
            hub_user = await self.credits.hub.user(name)
        except HubUnavailable:
            raise APIError(503, "the hub is not answering; try again shortly") from None
        groups = (hub_user or {}).get("groups") or ()
        # custom:credits:admin includes read; !user=NAME and !group=G filters count too.
        self.require(READ, user=name, groups=groups)
        if hub_user is None:
            raise APIError(404, f"no such user: {quote_input(name)}")
        self.write_json(await self.run(account_snapshot, self.credits, name))


default_handlers = [(r"/api/users/([^/]+)", UserAPIHandler)]
