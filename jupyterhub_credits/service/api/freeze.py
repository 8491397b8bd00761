"""Admin: stop or resume a user's earning.

``POST /api/accounts/{user}/freeze`` (optional body ``{"reason": "..."}``)
freezes: every later event of that user is kept and rejected with "earning
frozen". ``DELETE`` on the same path, or ``POST /api/accounts/{user}/unfreeze``,
lifts it. ``GET`` says whether it is frozen. All need ``custom:credits:admin``.
The answer is ``{"user", "frozen"}``.
"""

from __future__ import annotations

from ...earning import EarningError
from ..auth import ADMIN
from .base import APIError, APIHandler, actor_of

MAX_REASON = 1000


class FreezeAPIHandler(APIHandler):
    async def get(self, name: str):
        self.require(ADMIN)
        frozen = await self._call("is_frozen", name)
        self.write_json({"user": name, "frozen": frozen})

    async def post(self, name: str):
        model = self.require(ADMIN)
        reason = self.json_body({"reason"}).get("reason") or ""
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise APIError(400, f'"reason" must be text of at most {MAX_REASON} characters')
        await self.known_user(name)
        await self._call("freeze", name, actor=actor_of(model), reason=reason)
        self.write_json({"user": name, "frozen": True, "reason": reason})

    async def delete(self, name: str):
        model = self.require(ADMIN)
        await self._call("unfreeze", name, actor=actor_of(model))
        self.write_json({"user": name, "frozen": False})

    async def _call(self, method: str, *args, **kwargs):
        earning = self.credits.earning
        if earning is None:
            raise APIError(503, "earning is not available in this service process")
        try:
            return await self.run(getattr(earning, method), *args, **kwargs)
        except EarningError as error:
            raise APIError(400, str(error)) from None


class UnfreezeAPIHandler(FreezeAPIHandler):
    async def get(self, name: str):
        raise APIError(405, "POST here to lift a freeze")

    async def post(self, name: str):
        await FreezeAPIHandler.delete(self, name)

    async def delete(self, name: str):
        raise APIError(405, "POST here to lift a freeze")


default_handlers = [
    (r"/api/accounts/([^/]+)/freeze", FreezeAPIHandler),
    (r"/api/accounts/([^/]+)/unfreeze", UnfreezeAPIHandler),
]
