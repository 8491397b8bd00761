"""``POST /api/sessions/{server}/extend``: buy more time for a running session, or auto-extend.

Body (JSON object; either field or both):

- ``"hours"``: more hours to hold now (a decimal string such as ``"1.5"``, or
  a JSON number, read exactly). Refused with 403 when it is less than the
  caller's ``min_extension_minutes`` or the session's total paid time would
  exceed the caller's ``max_hours_per_session``, with 402 when the
  paying account's available balance does not cover it; the message says how
  much could be added.
- ``"auto_extend"``: ``true`` / ``false`` — let the meter extend the session by
  itself shortly before its paid time ends (while quota and balance allow).

``{server}`` is ``default`` for the default server (named ``""``). The answer
is ``{"session": {...as in /api/me}, "message": "..."}``.
"""

from __future__ import annotations

from ...catalog import BALANCE, QUOTA, InvalidHours, effective_quotas, parse_hours
from ...ledger import LedgerError
from ...ledger.core import user_account
from ...quoting import quote_input
from ...sessions.store import SessionError
from ..auth import SPEND
from ..extension import decide_extension
from ..models import server_from_path, server_label, session_to_dict
from .base import APIError, APIHandler

#: The same statuses the spawner uses for the same refusals.
REFUSAL_STATUS = {QUOTA: 403, BALANCE: 402}


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


class ExtendAPIHandler(APIHandler):
    async def post(self, server: str):
        model = self.require_user()
        user, groups = model["name"], model.get("groups") or ()
        self.require(SPEND, user=user, groups=groups)
        hours, auto_extend = parse_extend_body(self.json_body({"hours", "auto_extend"}))
        server_name = server_from_path(server)
        context = self.credits
        sessions = context.sessions
        message = ""
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
            if hours is not None:
                quotas = effective_quotas(context.catalog, groups)
                available = await run(context.ledger.available, session.account)
                decision = decide_extension(rate=session.rate_per_hour, held=session.held,
                                            hours=hours, available=available, quotas=quotas)
                if not decision.ok:
                    raise APIError(REFUSAL_STATUS.get(decision.reason, 400), decision.message)
                try:
                    await run(sessions.extend, session.key, decision.hold_units,
                              actor=user_account(user))
                except SessionError as error:
                    raise APIError(409, str(error)) from None
                except LedgerError as error:  # the balance changed since we looked
                    raise APIError(402, str(error)) from None
                await run(sessions.reset_warnings, session.key)
                message = decision.message
            if auto_extend is not None:
                await run(sessions.set_auto_extend, session.key, auto_extend)
                message = " ".join(filter(None, [message, "Auto-extend is " + (
                    "on." if auto_extend else "off.")]))
            session = await run(sessions.get, session.key)
        self.write_json({"session": session_to_dict(session, context.clock(),
                                                    notice=context.notices().get(session.key)),
                         "message": message})


default_handlers = [(r"/api/sessions/([^/]+)/extend", ExtendAPIHandler)]
