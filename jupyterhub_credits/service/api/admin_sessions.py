"""Admin: every open session, and stopping any of them now.

``GET /api/admin/sessions`` — every open session (starting, running or
settling), as ``/api/me`` shows one, plus its ``user`` and ``gpu_utilization``:
the mean utilisation (percent) of the latest GPU sample its user's server
reported within the last 5 minutes, null without one (or for a CPU session).

``POST /api/admin/sessions/{user}/{server}/stop`` (optional body
``{"reason": "..."}``, up to 1000 characters, shown to the user) — as the
user's own stop (``sessions.py``): settled now with reason ``admin`` and the
server stopped at once. Settled exactly once however often it is called: a
second call answers 409 ("already ended", with when and why); 404 when the
server has no open session (and this process does not remember stopping one
there). ``{server}`` is ``default`` for the default server.

Both need ``custom:credits:admin``; the stop also needs the meter (503 in a
service process without it).
"""

from __future__ import annotations

from ...sessions.usage import latest_gpu_utilization
from ..auth import ADMIN
from ..models import server_from_path, session_to_dict
from .base import APIError, APIHandler, actor_of
from .freeze import MAX_REASON
from .sessions import parse_key, stop_message, stop_session

#: A GPU sample older than this says nothing about the GPUs now.
UTILIZATION_WITHIN_S = 300


def admin_sessions_snapshot(context) -> dict:
    """Every open session with its user and latest GPU utilisation (blocking)."""
    now = context.clock()
    sessions = context.sessions.open_sessions()
    found = latest_gpu_utilization(context.ledger.engine, [s.key for s in sessions], now,
                                   within_s=UTILIZATION_WITHIN_S) if sessions else {}
    notices = context.notices()
    return {"sessions": [{**session_to_dict(s, now, notice=notices.get(s.key)), "user": s.user,
                          "gpu_utilization": found.get(s.key)} for s in sessions]}


class AdminSessionsAPIHandler(APIHandler):
    async def get(self):
        self.require(ADMIN)
        self.write_json(await self.run(admin_sessions_snapshot, self.credits))


class AdminStopAPIHandler(APIHandler):
    async def post(self, user: str, server: str):
        model = self.require(ADMIN)
        body = self.json_body({"reason", "key"})
        parse_key(body)  # accepted, not needed: a stop settles once anyway
        reason = body.get("reason") or ""
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise APIError(400, f'"reason" must be text of at most {MAX_REASON} characters')
        reason = reason.strip()
        notice = "Stopped by an administrator" + (f": {reason}" if reason else "") + \
            ". The server is being stopped."
        why = f"an administrator ({model.get('name')}) stopped it" + \
            (f": {reason!r}" if reason else "")
        settled = await stop_session(self, user, server_from_path(server), reason="admin",
                                     actor=actor_of(model), why=why, notice=notice)
        context = self.credits
        session = session_to_dict(settled, context.clock(),
                                  notice=context.notices().get(settled.key))
        self.write_json({"session": {**session, "user": settled.user},
                         "message": stop_message(settled, owner_words=f"{user}'s")})


default_handlers = [
    (r"/api/admin/sessions", AdminSessionsAPIHandler),
    (r"/api/admin/sessions/([^/]+)/([^/]+)/stop", AdminStopAPIHandler),
]
