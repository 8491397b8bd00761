"""The caller's sessions: list them, buy more time (or auto-extend), stop one now.

``GET /api/sessions`` — the caller's open sessions, as ``/api/me`` lists them
(``{"sessions": [...]}``; needs ``custom:credits:read`` for the caller).

``POST /api/sessions/{server}/extend`` — body (JSON object; ``hours`` and/or
``auto_extend``, optionally ``key``):

- ``"hours"``: more hours to hold now (a decimal string such as ``"1.5"``, or
  a JSON number, read exactly). Refused with 403 when it is less than the
  caller's ``min_extension_minutes`` or the session's total paid time would
  exceed the caller's ``max_hours_per_session``, with 402 when the
  paying account's available balance does not cover it; the message says how
  much could be added.
- ``"auto_extend"``: ``true`` / ``false`` — let the meter extend the session by
  itself shortly before its paid time ends (while quota and balance allow).
- ``"key"``: an idempotency key (1-100 characters, e.g. a fresh uuid4 per
  form): the same key again on the same session holds nothing more and answers
  ``"duplicate": true`` — the hold's ledger key is derived from it
  (``sessions.store.extension_hold_key``), so no table remembers keys.

``POST /api/sessions/{server}/stop`` — settle the session now (reason ``user``:
only the ready time up to now is charged, the rest of the hold returns to the
balance) and have the meter ask the hub to stop the server at once. Needs
``custom:credits:spend`` for the caller; 404 without an open session there, 409
when it is already ending or was already stopped, 503 in a service without
the meter.

``{server}`` is ``default`` for the default server (named ``""``). Extend and
stop answer ``{"session": {...as in /api/me}, "message": "..."}``; a stopped
session also shows ``charged``, ``ended_at`` and ``end_reason``.
"""

from __future__ import annotations

from ...catalog import BALANCE, QUOTA, InvalidHours, effective_quotas, parse_hours
from ...catalog.wording import credits_text
from ...ledger import LedgerError, format_amount
from ...ledger.core import user_account
from ...quoting import quote_input
from ...sessions.store import DuplicateExtension, Session, SessionError, extension_hold_key
from ..auth import READ, SPEND
from ..extension import decide_extension
from ..models import server_from_path, server_label, session_to_dict
from .base import APIError, APIHandler

#: The same statuses the spawner uses for the same refusals.
REFUSAL_STATUS = {QUOTA: 403, BALANCE: 402}
#: Idempotency keys: as the admin writes' (contract: 1-100 characters).
MAX_KEY = 100

#: How a 409 names the way a session ended (``credits_sessions.end_reason``).
END_REASONS = {
    "expired": "its paid time ended",
    "gpu_idle": "its GPUs stayed idle",
    "stopped": "its server was stopped",
    "server_gone": "its server was gone",
    "user": "it was stopped by its owner",
    "admin": "it was stopped by an administrator",
    "refused": "its start was refused",
}


def parse_key(body: dict) -> str | None:
    """The optional idempotency ``key`` of a write; 400 when it is not 1-100 characters."""
    if "key" not in body or body["key"] is None:
        return None
    key = body["key"]
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY or not key.strip():
        raise APIError(400, f'"key" must be text of 1 to {MAX_KEY} characters '
                            "(e.g. a fresh uuid4 per form)")
    return key


def parse_extend_body(body: dict):
    """(hours or None, auto_extend or None) from the checked JSON body; 400 when invalid."""
    if "hours" not in body and "auto_extend" not in body:
        raise APIError(400, 'give "hours" (e.g. "1.5") and/or "auto_extend" (true or false)')
    hours = None
    if "hours" in body:
        value = body["hours"]
        try:
            hours = parse_hours(value)
        except InvalidHours as error:
            raise APIError(400, str(error)) from None
    auto_extend = body.get("auto_extend")
    if auto_extend is not None and not isinstance(auto_extend, bool):
        raise APIError(400, f'"auto_extend" must be true or false, not {quote_input(auto_extend)}')
    return hours, auto_extend


def ended_text(session: Session) -> str:
    """ "this session already ended at 12:03:04 UTC (it was stopped by its owner)"."""
    how = END_REASONS.get(session.end_reason or "", f"reason: {session.end_reason}")
    if session.state != "ended":
        return f"this session is already ending ({how})"
    when = f" at {session.ended_at:%H:%M:%S} UTC" if session.ended_at else ""
    return f"this session already ended{when} ({how}); nothing more was charged"


def stop_message(session: Session, *, owner_words: str = "your") -> str:
    """ "Stopped. Charged 1.23 credits; 13.77 returned to your balance." """
    charged = session.charged or 0
    returned = max(session.held - charged, 0)
    payer = owner_words if session.account == user_account(session.user) \
        else f"the {session.account}"
    return (f"Stopped. Charged {credits_text(charged)}; {format_amount(returned)} returned to "
            f"{payer} balance.")


async def stop_session(handler: APIHandler, user: str, server_name: str, *, reason: str,
                       actor: str, why: str, notice: str) -> Session:
    """Settle ``user``'s open session on ``server_name`` now and have its server stopped.

    Shared by the user's and the admin's stop. Settling happens once: a second
    call finds the session ended (409), or none (404) once the meter's memory of
    recent stops is gone (a restart).
    """
    context = handler.credits
    meter = context.meter
    if meter is None:
        raise APIError(503, "stopping sessions needs the credits meter, which does not run in "
                            "this service process")
    session = await meter.db(context.sessions.open_session, user, server_name)
    if session is None:
        recent = meter.stopped_on_request(user, server_name)
        ended = await meter.db(context.sessions.get, recent) if recent else None
        if ended is not None and ended.state == "ended":
            raise APIError(409, ended_text(ended))
        raise APIError(404, f"{quote_input(user)} has no open session on server "
                            f"{quote_input(server_label(server_name))}")
    if session.state not in ("starting", "running"):
        raise APIError(409, ended_text(session))
    settled = await meter.stop_now(session, reason=reason, actor=actor, why=why, notice=notice)
    if settled is None:
        current = await meter.db(context.sessions.get, session.key)
        if current is not None and current.state in ("settling", "ended"):
            raise APIError(409, ended_text(current))
        raise APIError(503, "the session could not be settled just now; try again shortly")
    return settled


class SessionsAPIHandler(APIHandler):
    async def get(self):
        model = self.require_user()
        user = model["name"]
        self.require(READ, user=user, groups=model.get("groups") or ())
        context = self.credits
        sessions = await self.run(context.sessions.open_sessions, user)
        now, notices = context.clock(), context.notices()
        self.write_json({"sessions": [session_to_dict(s, now, notice=notices.get(s.key))
                                      for s in sessions]})


class ExtendAPIHandler(APIHandler):
    async def post(self, server: str):
        model = self.require_user()
        user, groups = model["name"], model.get("groups") or ()
        self.require(SPEND, user=user, groups=groups)
        body = self.json_body({"hours", "auto_extend", "key"})
        hours, auto_extend = parse_extend_body(body)
        request_key = parse_key(body)
        server_name = server_from_path(server)
        context = self.credits
        sessions = context.sessions
        message, duplicate = "", False
        # Under the lock the meter shares, database work runs on the meter's own threads:
        # a lock held while waiting for the default pool would hold up the meter behind
        # every other request.
        run = context.meter.db if context.meter is not None else self.run
        async with context.lock:
            session = await run(sessions.open_session, user, server_name)
            if session is None:
                raise APIError(404, f"{user} has no open session on server "
                                    f"{quote_input(server_label(server_name))}")
            if session.state not in ("starting", "running"):
                raise APIError(409, "this session is ending and cannot be changed")
            if hours is not None and request_key is not None:
                # Before the quota and balance are judged: a repeat must not be refused
                # because the first request already used the room.
                duplicate = await run(sessions.has_hold, session.key,
                                      extension_hold_key(session.key, request_key))
            if hours is not None and not duplicate:
                quotas = effective_quotas(context.catalog, groups)
                available = await run(context.ledger.available, session.account)
                decision = decide_extension(rate=session.rate_per_hour, held=session.held,
                                            hours=hours, available=available, quotas=quotas)
                if not decision.ok:
                    raise APIError(REFUSAL_STATUS.get(decision.reason, 400), decision.message)
                try:
                    await run(sessions.extend, session.key, decision.hold_units,
                              actor=user_account(user), request_key=request_key)
                except DuplicateExtension:
                    duplicate = True
                except SessionError as error:
                    raise APIError(409, str(error)) from None
                except LedgerError as error:  # the balance changed since we looked
                    raise APIError(402, str(error)) from None
                else:
                    await run(sessions.reset_warnings, session.key)
                    message = decision.message
            if duplicate:
                message = "This extension was already applied (same key); nothing more was held."
            if auto_extend is not None:
                await run(sessions.set_auto_extend, session.key, auto_extend)
                message = " ".join(filter(None, [message, "Auto-extend is " + (
                    "on." if auto_extend else "off.")]))
            session = await run(sessions.get, session.key)
            if context.meter is not None:  # its stop and warnings move with paid_until
                context.meter.schedule.plan(session)
        self.write_json({"session": session_to_dict(session, context.clock(),
                                                    notice=context.notices().get(session.key)),
                         "message": message, "duplicate": duplicate})


class StopAPIHandler(APIHandler):
    async def post(self, server: str):
        model = self.require_user()
        user = model["name"]
        self.require(SPEND, user=user, groups=model.get("groups") or ())
        parse_key(self.json_body({"key"}))  # accepted, not needed: a stop settles once anyway
        settled = await stop_session(
            self, user, server_from_path(server), reason="user", actor=user_account(user),
            why="its owner stopped it", notice="Stopped by you: the server is being stopped.")
        context = self.credits
        self.write_json({"session": session_to_dict(settled, context.clock(),
                                                    notice=context.notices().get(settled.key)),
                         "message": stop_message(settled)})


default_handlers = [
    (r"/api/sessions", SessionsAPIHandler),
    (r"/api/sessions/([^/]+)/extend", ExtendAPIHandler),
    (r"/api/sessions/([^/]+)/stop", StopAPIHandler),
]
