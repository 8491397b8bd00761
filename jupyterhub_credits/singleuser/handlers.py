"""``GET {base_url}credits/status`` and ``POST {base_url}credits/extend``.

Both are jupyter_server API handlers (its authentication, XSRF and authorizer, the
``credits`` resource). The browser never talks to the credits service: these ask it
server-side with the server's token, and every answer is scrubbed of anything
token-like before it leaves. Errors are answers with words (``{"message": ...}``),
never a traceback.
"""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .status import ServiceError, scrub

SETTINGS_KEY = "jupyterhub_credits"
#: Statuses of the service's refusals, passed on as they are (with its message).
PASSED_ON = frozenset({400, 402, 403, 404, 409})
EXTEND_FIELDS = ("hours", "auto_extend", "key")


def viewer_name(user) -> str | None:
    """Who is looking: the hub's user name under JupyterHub, else the server's own."""
    hub_user = getattr(user, "hub_user", None)
    if isinstance(hub_user, dict) and isinstance(hub_user.get("name"), str):
        return hub_user["name"]
    return getattr(user, "username", None) or (user if isinstance(user, str) else None)


class CreditsHandler(APIHandler):
    auth_resource = "credits"

    @property
    def state(self):
        return self.settings.get(SETTINGS_KEY)

    def answer(self, status: int, body: dict) -> None:
        state = self.state
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(scrub(body, state.token if state is not None else None)))


class CreditsStatusHandler(CreditsHandler):
    @web.authenticated
    @authorized
    async def get(self):
        state = self.state
        if state is None:
            return self.answer(200, {"available": False, "error": "credits are not set up"})
        refresh = self.get_query_argument("refresh", "") in ("1", "true", "yes")
        body = await state.status(viewer_name(self.current_user), refresh=refresh)
        self.answer(200, body)


class CreditsExtendHandler(CreditsHandler):
    @web.authenticated
    @authorized
    async def post(self):
        state = self.state
        if state is None or not state.under_hub:
            return self.answer(503, {"message": "This server does not run under JupyterHub: "
                                                "there are no credits to spend"})
        viewer = viewer_name(self.current_user)
        if viewer != state.user:  # before anything reaches the service
            return self.answer(403, {"message": f"Only {state.user} can spend {state.user}'s "
                                                "credits"})
        try:
            body = json.loads(self.request.body or b"")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self.answer(400, {"message": 'Send a JSON object: {"hours": "1.5", "key": '
                                                '"<uuid>"} and/or {"auto_extend": true}'})
        unknown = sorted(set(body) - set(EXTEND_FIELDS))
        if unknown:
            return self.answer(400, {"message": "Unknown field(s): " + ", ".join(
                repr(name)[:60] for name in unknown[:5])})
        if "hours" not in body and "auto_extend" not in body:
            return self.answer(400, {"message": 'Give "hours" (e.g. "1.5") and/or '
                                                '"auto_extend" (true or false)'})
        try:
            code, answer = await state.extend(body)
        except ServiceError as error:
            return self.answer(503, {"message": f"{error}; nothing was changed. Try again in a "
                                                "moment."})
        message = answer.get("message")
        message = message if isinstance(message, str) else None
        if code == 200:
            status = await state.status(viewer, force=True)
            return self.answer(200, {"message": message or "Done.", "status": status})
        if code in PASSED_ON:
            return self.answer(code, {"message": message or f"Refused (HTTP {code})"})
        return self.answer(503, {"message": f"The credits service answered HTTP {code}; "
                                            "nothing was changed. Try again in a moment."})
